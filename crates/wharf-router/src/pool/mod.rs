//! A revision's instance pool. Requests [`RevisionPool::acquire`] a slot on an instance whose
//! in-flight count is under the revision's concurrency (the hard limit Cloud Run calls
//! `containerConcurrency`); when none has room they wait in a bounded queue. The scaling loop
//! (`scaling`) starts and stops instances through the revision's [`Launcher`]. Instances
//! that are gone ([`Upstream::is_gone`]) are never routed to and are dropped from the pool;
//! their teardown is the launcher's business.
//!
//! The pool does not proxy (the [`crate::proxy`] does, holding a [`Lease`]) and does not
//! decide how many instances a load needs (the autoscaler does).

mod scaling;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::http::uri::Authority;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wharf_autoscaler::{Autoscaler, ScalingConfig};

use crate::error::ProxyError;
use crate::upstream::{LaunchError, Launcher, Upstream};

/// How long [`RevisionPool::close`] waits, past its drain period, for instances still
/// starting, so that they are stopped rather than leaked.
const START_GRACE: Duration = Duration::from_secs(60);

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
    /// How the proxy speaks to the revision's instances; fixed for the pool's life (a
    /// revision's port is immutable), so [`RevisionPool::set_config`] does not change it.
    pub protocol: UpstreamProtocol,
}

/// The protocol a revision's instances serve on their port (Cloud Run's port name: `http1`,
/// or `h2c` for end-to-end HTTP/2, `--use-http2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (upgrades such as WebSocket are spliced through).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: every request, whatever the client spoke,
    /// reaches the instance as HTTP/2 (gRPC needs this: trailers, bidirectional streams).
    H2c,
}

struct Slot {
    /// Names the slot for the leases on it (slots move when others are removed).
    key: u64,
    upstream: Arc<dyn Upstream>,
    /// `ip:port` of the instance, parsed once for the proxy's upstream URIs.
    authority: Authority,
    in_flight: u32,
    idle_since: Instant,
    /// The upstream reported itself gone; kept so that it is asked once.
    gone: bool,
}

impl Slot {
    /// Whether the instance is gone, asking it only until it says so.
    fn check_gone(&mut self) -> bool {
        self.gone = self.gone || self.upstream.is_gone();
        self.gone
    }
}

struct PoolState {
    slots: Vec<Slot>,
    next_key: u64,
    starting: u32,
    queued: u32,
    /// Why the last start failed, while no instance runs or starts.
    last_error: Option<LaunchError>,
    /// After a failed start, no new start before this (a crashing image is not restarted in
    /// a tight loop).
    retry_after: Option<Instant>,
    /// [`RevisionPool::close`] has taken the instances to stop them: any instance that
    /// arrives later is stopped by whoever brings it.
    drained: bool,
    autoscaler: Autoscaler,
    config: PoolConfig,
}

impl PoolState {
    fn add(&mut self, upstream: Arc<dyn Upstream>) {
        let authority = upstream.addr().to_string().parse().expect("a socket address is a valid URI authority");
        let key = self.next_key;
        self.next_key += 1;
        self.slots.push(Slot { key, upstream, authority, in_flight: 0, idle_since: Instant::now(), gone: false });
    }

    fn prune_gone(&mut self) {
        self.slots.retain_mut(|s| !s.check_gone());
    }

    fn in_flight(&self) -> u32 {
        self.slots.iter().map(|s| s.in_flight).sum()
    }

    /// The slot a request should take: the `preferred` instance if it has room, else the
    /// least loaded one with room. Asks `is_gone` of the chosen instance only.
    fn pick(&mut self, preferred: Option<&str>) -> Option<usize> {
        let limit = self.config.scaling.container_concurrency.max(1);
        if let Some(id) = preferred
            && let Some(i) = self.slots.iter().position(|s| s.upstream.id() == id)
            && self.slots[i].in_flight < limit
            && !self.slots[i].check_gone()
        {
            return Some(i);
        }
        loop {
            let (i, _) = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.gone && s.in_flight < limit)
                .min_by_key(|(_, s)| s.in_flight)?;
            if !self.slots[i].check_gone() {
                return Some(i);
            }
        }
    }
}

pub struct RevisionPool {
    pub revision: String,
    /// How the proxy speaks to this revision's instances.
    pub protocol: UpstreamProtocol,
    launcher: Arc<dyn Launcher>,
    state: Mutex<PoolState>,
    /// Raised whenever capacity frees or the pool changes (a lease ends, an instance joins,
    /// a start ends, the pool closes): queued requests and `close` wait on it.
    changed: Notify,
    /// Wakes the scaling loop early.
    wake: Notify,
    closed: CancellationToken,
    request_timeout_ms: AtomicU64,
    session_affinity: AtomicBool,
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
pub struct Lease {
    pool: Arc<RevisionPool>,
    key: u64,
    upstream: Arc<dyn Upstream>,
    authority: Authority,
}

impl Lease {
    /// The instance this request may use.
    pub fn upstream(&self) -> &Arc<dyn Upstream> {
        &self.upstream
    }

    /// The instance's address as a URI authority (parsed once per instance).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("revision", &self.pool.revision).field("upstream", &self.upstream.id()).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.upstream.request_ended();
        {
            let mut st = self.pool.lock();
            if let Some(slot) = st.slots.iter_mut().find(|s| s.key == self.key) {
                slot.in_flight = slot.in_flight.saturating_sub(1);
                if slot.in_flight == 0 {
                    slot.idle_since = Instant::now();
                }
            }
        }
        self.pool.changed.notify_waiters();
    }
}

/// A lease counted in the pool whose instance has not been told yet (the pool's lock is
/// still held): [`PendingLease::started`] tells it, outside the lock, since resuming an instance
/// whose CPU is throttled may take a system call.
struct PendingLease(Lease);

impl PendingLease {
    fn started(self) -> Lease {
        self.0.upstream.request_started();
        self.0
    }
}

/// A request's place in the queue; leaving it (served, refused, timed out or cancelled)
/// gives the place back.
struct QueuePlace<'a> {
    pool: &'a RevisionPool,
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.pool.lock().queued -= 1;
    }
}

/// A snapshot of a pool, for status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Instances that can take requests (not gone).
    pub ready: u32,
    pub starting: u32,
    pub in_flight: u32,
    pub queued: u32,
}

impl RevisionPool {
    /// Creates the pool and starts its scaling loop (which keeps min-instances warm).
    /// Must be called within a tokio runtime.
    pub fn start(revision: &str, config: PoolConfig, launcher: Arc<dyn Launcher>) -> Arc<RevisionPool> {
        let pool = Arc::new(RevisionPool {
            revision: revision.to_owned(),
            protocol: config.protocol,
            launcher,
            request_timeout_ms: AtomicU64::new(millis(config.request_timeout)),
            session_affinity: AtomicBool::new(config.session_affinity),
            state: Mutex::new(PoolState {
                slots: Vec::new(),
                next_key: 0,
                starting: 0,
                queued: 0,
                last_error: None,
                retry_after: None,
                drained: false,
                autoscaler: Autoscaler::new(config.scaling.clone(), Instant::now()),
                config,
            }),
            changed: Notify::new(),
            wake: Notify::new(),
            closed: CancellationToken::new(),
        });
        tokio::spawn(scaling::scaling_loop(Arc::downgrade(&pool), pool.closed.clone()));
        pool
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> PoolConfig {
        self.lock().config.clone()
    }

    /// The revision's request timeout (read on every request, so kept outside the lock).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.load(Ordering::Relaxed))
    }

    /// Whether the revision uses session affinity (read on every request, kept outside the lock).
    pub fn session_affinity(&self) -> bool {
        self.session_affinity.load(Ordering::Relaxed)
    }

    /// Updates scaling settings in place (the revision itself is immutable; the service's
    /// scaling bounds may change). The scaling loop acts on them at once.
    pub fn set_config(&self, config: PoolConfig) {
        let mut st = self.lock();
        st.autoscaler.set_config(config.scaling.clone());
        self.request_timeout_ms.store(millis(config.request_timeout), Ordering::Relaxed);
        self.session_affinity.store(config.session_affinity, Ordering::Relaxed);
        st.config = config;
        drop(st);
        self.wake.notify_one();
    }

    pub fn stats(&self) -> PoolStats {
        let mut st = self.lock();
        let ready = st.slots.iter_mut().map(Slot::check_gone).filter(|gone| !gone).count();
        PoolStats {
            ready: u32::try_from(ready).unwrap_or(u32::MAX),
            starting: st.starting,
            in_flight: st.in_flight(),
            queued: st.queued,
        }
    }

    /// Adds an instance started elsewhere (the deploy's readiness check) to the pool. After
    /// [`RevisionPool::close`] has stopped the pool's instances, the instance is stopped instead.
    pub fn adopt(&self, upstream: Arc<dyn Upstream>) {
        let mut st = self.lock();
        if st.drained {
            drop(st);
            tokio::spawn(self.launcher.stop(upstream));
            return;
        }
        // A fresh instance counts as activity: it is kept warm for the idle period.
        st.autoscaler.record(Instant::now(), 1.0);
        st.add(upstream);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Counts a request on `slot`. The caller releases the pool's lock, then calls
    /// [`Lease::started`] before handing the lease out.
    fn lease(self: &Arc<Self>, slot: &mut Slot) -> PendingLease {
        slot.in_flight += 1;
        PendingLease(Lease {
            pool: self.clone(),
            key: slot.key,
            upstream: slot.upstream.clone(),
            authority: slot.authority.clone(),
        })
    }

    /// Claims a slot at once if an instance has room (the common, warm case: no waiting, no
    /// timers), preferring the instance `preferred` names when it has room. None once closed.
    pub fn try_acquire(self: &Arc<Self>, preferred: Option<&str>) -> Option<Lease> {
        if self.closed.is_cancelled() {
            return None;
        }
        let pending = {
            let mut st = self.lock();
            let i = st.pick(preferred)?;
            self.lease(&mut st.slots[i])
        };
        Some(pending.started())
    }

    /// Claims a slot on an instance, waiting in the queue (up to the queue timeout) while
    /// instances start. Cancel-safe: dropping the future gives its queue place back.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, ProxyError> {
        if let Some(lease) = self.try_acquire(None) {
            return Ok(lease);
        }
        let deadline = Instant::now() + self.lock().config.queue_timeout;
        let mut place = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut st = self.lock();
                if self.closed.is_cancelled() {
                    return Err(ProxyError::NoInstance);
                }
                st.prune_gone();
                if let Some(i) = st.pick(None) {
                    let pending = self.lease(&mut st.slots[i]);
                    drop(st);
                    return Ok(pending.started());
                }
                if place.is_none() {
                    if st.queued as usize >= st.config.max_queue {
                        return Err(ProxyError::QueueFull);
                    }
                    st.queued += 1;
                    place = Some(QueuePlace { pool: self });
                    if st.slots.is_empty() && st.starting == 0 {
                        // Scale from zero now, not at the next tick.
                        let sample = f64::from(st.queued);
                        st.autoscaler.record(Instant::now(), sample);
                    }
                }
                if st.starting == 0
                    && let Some(error) = &st.last_error
                {
                    // The machine had no room for the instance this request needs: say so at
                    // once (429) while the pool backs off, even if busy instances run; after
                    // the back-off the request waits for a new attempt instead.
                    if error.is_no_capacity() && st.retry_after.is_some_and(|t| Instant::now() < t) {
                        return Err(ProxyError::NoCapacity(error.clone()));
                    }
                    if st.slots.is_empty() && !error.is_no_capacity() {
                        return Err(ProxyError::StartFailed(error.clone()));
                    }
                }
            }
            self.wake.notify_one();
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(ProxyError::NoInstance);
            }
        }
    }

    /// Stops taking requests, waits for in-flight ones (up to `drain`) and for starts under
    /// way (up to a minute more), then stops every instance and resolves when all are
    /// stopped. Used when a revision no longer serves traffic or is deleted.
    pub async fn close(&self, drain: Duration) {
        self.closed.cancel();
        self.changed.notify_waiters();
        let deadline = Instant::now() + drain;
        self.wait_until(deadline, |st| st.in_flight() == 0).await;
        self.wait_until(deadline + START_GRACE, |st| st.starting == 0).await;
        let slots = {
            let mut st = self.lock();
            st.drained = true;
            std::mem::take(&mut st.slots)
        };
        futures::future::join_all(slots.into_iter().map(|s| self.launcher.stop(s.upstream))).await;
    }

    /// Waits until `done` holds for the pool's state, or `deadline`.
    async fn wait_until(&self, deadline: Instant, done: impl Fn(&PoolState) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.lock()) || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}
