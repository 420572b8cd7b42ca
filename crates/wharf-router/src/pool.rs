//! A revision's instance pool. Requests [`RevisionPool::acquire`] a slot on an instance whose
//! in-flight count is under the revision's concurrency (the hard limit Cloud Run calls
//! `containerConcurrency`); when none has room they wait in a bounded queue. A scaling loop
//! samples in-flight plus queued requests every 100 ms (and at once when a request arrives at
//! an empty pool), asks the autoscaler how many instances the revision needs, and starts or
//! stops instances through the [`Launcher`]. Instances that die are dropped from the pool.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wharf_autoscaler::{Autoscaler, ScalingConfig};
use wharf_runtime::Instance;

use crate::error::ProxyError;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Starts and stops a revision's instances.
pub trait Launcher: Send + Sync + fmt::Debug + 'static {
    /// Starts one instance and resolves when it is ready (or why it could not start).
    fn launch(&self) -> BoxFuture<Result<Arc<Instance>, String>>;
    /// Stops an instance gracefully.
    fn stop(&self, instance: Arc<Instance>) -> BoxFuture<()>;
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub scaling: ScalingConfig,
    /// The request timeout (`--timeout`).
    pub request_timeout: Duration,
    /// How many requests may wait for an instance.
    pub max_queue: usize,
    /// How long a request may wait for an instance before a 503.
    pub queue_timeout: Duration,
    /// Send a client back to the instance that served it before (cookie-based, as Cloud Run's
    /// session affinity: best effort, never past the instance's concurrency).
    pub session_affinity: bool,
}

struct Slot {
    instance: Arc<Instance>,
    /// `ip:port` of the instance, parsed once for the proxy's upstream URIs.
    authority: hyper::http::uri::Authority,
    in_flight: u32,
    idle_since: Instant,
}

impl Slot {
    fn new(instance: Arc<Instance>) -> Slot {
        let authority = instance.addr.to_string().parse().expect("a socket address is a valid URI authority");
        Slot { instance, authority, in_flight: 0, idle_since: Instant::now() }
    }
}

struct PoolState {
    slots: Vec<Slot>,
    starting: u32,
    queued: u32,
    /// Why the last start failed, while no instance runs or starts.
    last_error: Option<String>,
    /// After a failed start, no new start before this (a crashing image is not restarted in
    /// a tight loop).
    retry_after: Option<Instant>,
    autoscaler: Autoscaler,
    config: PoolConfig,
}

pub struct RevisionPool {
    pub revision: String,
    launcher: Arc<dyn Launcher>,
    state: Mutex<PoolState>,
    /// Wakes requests waiting for a slot.
    capacity: Notify,
    /// Wakes the scaling loop early.
    wake: Notify,
    closed: CancellationToken,
    request_timeout_ms: std::sync::atomic::AtomicU64,
    session_affinity: std::sync::atomic::AtomicBool,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Debug for RevisionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("RevisionPool")
            .field("revision", &self.revision)
            .field("instances", &st.slots.len())
            .field("starting", &st.starting)
            .field("queued", &st.queued)
            .finish()
    }
}

/// A request's claim on one instance; dropping it frees the slot.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<RevisionPool>,
    pub instance: Arc<Instance>,
    pub authority: hyper::http::uri::Authority,
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut st = self.pool.lock();
            if let Some(slot) = st.slots.iter_mut().find(|s| Arc::ptr_eq(&s.instance, &self.instance)) {
                slot.in_flight = slot.in_flight.saturating_sub(1);
                if slot.in_flight == 0 {
                    slot.idle_since = Instant::now();
                }
            }
        }
        self.pool.capacity.notify_waiters();
    }
}

/// A snapshot of a pool, for status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub ready: u32,
    pub starting: u32,
    pub in_flight: u32,
    pub queued: u32,
}

impl RevisionPool {
    /// Creates the pool and starts its scaling loop (which keeps min-instances warm).
    pub fn start(revision: &str, config: PoolConfig, launcher: Arc<dyn Launcher>) -> Arc<RevisionPool> {
        let pool = Arc::new(RevisionPool {
            revision: revision.to_owned(),
            launcher,
            state: Mutex::new(PoolState {
                slots: Vec::new(),
                starting: 0,
                queued: 0,
                last_error: None,
                retry_after: None,
                autoscaler: Autoscaler::new(config.scaling.clone(), Instant::now()),
                config,
            }),
            capacity: Notify::new(),
            wake: Notify::new(),
            closed: CancellationToken::new(),
            request_timeout_ms: std::sync::atomic::AtomicU64::new(0),
            session_affinity: std::sync::atomic::AtomicBool::new(false),
        });
        pool.request_timeout_ms.store(millis(pool.lock().config.request_timeout), std::sync::atomic::Ordering::Relaxed);
        pool.session_affinity.store(pool.lock().config.session_affinity, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(scaling_loop(Arc::downgrade(&pool), pool.closed.clone()));
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> PoolConfig {
        self.lock().config.clone()
    }

    /// The revision's request timeout (read on every request, so kept outside the lock).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Updates scaling settings in place (the revision itself is immutable; the service's
    /// scaling bounds may change).
    pub fn set_config(&self, config: PoolConfig) {
        let mut st = self.lock();
        st.autoscaler.set_config(config.scaling.clone());
        self.request_timeout_ms.store(millis(config.request_timeout), std::sync::atomic::Ordering::Relaxed);
        self.session_affinity.store(config.session_affinity, std::sync::atomic::Ordering::Relaxed);
        st.config = config;
        drop(st);
        self.wake.notify_one();
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.lock();
        PoolStats {
            ready: u32::try_from(st.slots.len()).unwrap_or(u32::MAX),
            starting: st.starting,
            in_flight: st.slots.iter().map(|s| s.in_flight).sum(),
            queued: st.queued,
        }
    }

    /// Adds an instance started elsewhere (the deploy's readiness check) to the pool.
    pub fn adopt(&self, instance: Arc<Instance>) {
        let mut st = self.lock();
        // A fresh instance counts as activity: it is kept warm for the idle period.
        st.autoscaler.record(Instant::now(), 1.0);
        st.slots.push(Slot::new(instance));
        drop(st);
        self.capacity.notify_waiters();
    }

    /// Whether the revision uses session affinity (read on every request, kept outside the lock).
    pub fn session_affinity(&self) -> bool {
        self.session_affinity.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Claims a slot at once if an instance has room (the common, warm case: no waiting, no
    /// timers), preferring the instance `preferred` names when it has room.
    pub fn try_acquire(self: &Arc<Self>, preferred: Option<&str>) -> Option<Lease> {
        let mut st = self.lock();
        let limit = st.config.scaling.container_concurrency.max(1);
        let has_room = |s: &Slot| s.in_flight < limit && !s.instance.has_exited();
        let preferred_index = preferred.and_then(|id| st.slots.iter().position(|s| s.instance.id == id && has_room(s)));
        let slot = match preferred_index {
            Some(i) => &mut st.slots[i],
            None => st.slots.iter_mut().filter(|s| has_room(s)).min_by_key(|s| s.in_flight)?,
        };
        slot.in_flight += 1;
        let (instance, authority) = (slot.instance.clone(), slot.authority.clone());
        Some(Lease { pool: self.clone(), instance, authority })
    }

    /// Claims a slot on an instance, waiting in the queue while instances start.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, ProxyError> {
        if let Some(lease) = self.try_acquire(None) {
            return Ok(lease);
        }
        let mut queued = false;
        let queue_timeout = self.lock().config.queue_timeout;
        let deadline = Instant::now() + queue_timeout;
        let result = loop {
            let notified = self.capacity.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                st.slots.retain(|s| !s.instance.state().is_terminal() && !s.instance.has_exited());
                let limit = st.config.scaling.container_concurrency.max(1);
                let best = st.slots.iter_mut().filter(|s| s.in_flight < limit).min_by_key(|s| s.in_flight);
                if let Some(slot) = best {
                    slot.in_flight += 1;
                    let (instance, authority) = (slot.instance.clone(), slot.authority.clone());
                    if queued {
                        st.queued -= 1;
                    }
                    return Ok(Lease { pool: self.clone(), instance, authority });
                }
                if self.closed.is_cancelled() {
                    break Err(ProxyError::NoInstance);
                }
                if !queued {
                    if st.queued as usize >= st.config.max_queue {
                        return Err(ProxyError::QueueFull);
                    }
                    st.queued += 1;
                    queued = true;
                    if st.slots.is_empty() && st.starting == 0 {
                        // Scale from zero now, not at the next tick.
                        let sample = f64::from(st.queued);
                        st.autoscaler.record(Instant::now(), sample);
                    }
                }
                if st.slots.is_empty()
                    && st.starting == 0
                    && let Some(reason) = st.last_error.clone()
                {
                    break Err(ProxyError::StartFailed(reason));
                }
            }
            self.wake.notify_one();
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => break Err(ProxyError::NoInstance),
            }
        };
        if queued {
            self.lock().queued -= 1;
        }
        result
    }

    /// Stops taking requests, waits for in-flight ones (up to `drain`), then stops every
    /// instance. Used when a revision no longer serves traffic or is deleted.
    pub async fn close(&self, drain: Duration) {
        self.closed.cancel();
        self.capacity.notify_waiters();
        let deadline = Instant::now() + drain;
        while self.stats().in_flight > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Wait for starts in flight so their instances are stopped too.
        while self.lock().starting > 0 && Instant::now() < deadline + Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let slots: Vec<Slot> = std::mem::take(&mut self.lock().slots);
        let stops: Vec<_> = slots.into_iter().map(|s| self.launcher.stop(s.instance)).collect();
        futures::future::join_all(stops).await;
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

async fn scaling_loop(pool: std::sync::Weak<RevisionPool>, closed: CancellationToken) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        let wake = p.wake.notified();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = wake => {}
            _ = closed.cancelled() => return,
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
        st.slots.retain(|s| !s.instance.state().is_terminal() && !s.instance.has_exited());
        let in_flight: u32 = st.slots.iter().map(|s| s.in_flight).sum();
        let sample = f64::from(in_flight + st.queued);
        st.autoscaler.record(now, sample);
        let current = u32::try_from(st.slots.len()).unwrap_or(u32::MAX) + st.starting;
        let mut desired = st.autoscaler.decide(now, current).desired;
        if st.queued > 0 {
            // Requests are waiting for capacity: start what they need now, without waiting
            // for the windows to fill (what Knative's activator does for a cold revision).
            let limit = st.config.scaling.container_concurrency.max(1);
            let needed = (in_flight + st.queued).div_ceil(limit).min(st.config.scaling.max_instances);
            desired = desired.max(needed);
        }
        let backing_off = st.retry_after.is_some_and(|t| now < t);
        to_start = if backing_off { 0 } else { desired.saturating_sub(current) };
        st.starting += to_start;
        if desired < current && st.starting == 0 {
            let mut excess = current - desired;
            // Stop the instances idle the longest first; busy ones are never stopped.
            st.slots.sort_by_key(|s| (s.in_flight, s.idle_since));
            while excess > 0 && st.slots.first().is_some_and(|s| s.in_flight == 0) {
                to_stop.push(st.slots.remove(0).instance);
                excess -= 1;
            }
        }
    }
    for instance in to_stop {
        tracing::debug!(revision = %pool.revision, instance = %instance.id, "scaling down");
        tokio::spawn(pool.launcher.stop(instance));
    }
    for _ in 0..to_start {
        let pool = pool.clone();
        tokio::spawn(async move {
            let result = pool.launcher.launch().await;
            let unwanted = {
                let mut st = pool.lock();
                st.starting -= 1;
                match result {
                    Ok(instance) if pool.closed.is_cancelled() => Some(instance),
                    Ok(instance) => {
                        st.last_error = None;
                        st.retry_after = None;
                        st.slots.push(Slot::new(instance));
                        None
                    }
                    Err(reason) => {
                        tracing::warn!(revision = %pool.revision, %reason, "instance failed to start");
                        st.last_error = Some(reason);
                        st.retry_after = Some(Instant::now() + Duration::from_secs(1));
                        None
                    }
                }
            };
            if let Some(instance) = unwanted {
                pool.launcher.stop(instance).await;
            }
            pool.capacity.notify_waiters();
        });
    }
}
