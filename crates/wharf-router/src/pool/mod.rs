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

use std::collections::BTreeSet;
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
use crate::observe::{Histogram, HistogramSnapshot, PoolOwner};
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
    /// When the instance joined the pool (for instance time, and to tell a cold start).
    joined: Instant,
    /// Since when at least one request has been in flight on it.
    busy_since: Option<Instant>,
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
    /// The tickets of the queued requests, oldest first: a freed slot goes to the oldest
    /// waiter, never to a request that arrived after it.
    waiting: BTreeSet<u64>,
    next_ticket: u64,
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
    /// What the pool has accounted since it started (see [`PoolReport`]).
    meter: Meter,
}

/// Instance time and busy time of instances no longer in the pool, plus the autoscaler's
/// last decision and the concurrency peak, for [`RevisionPool::report`].
#[derive(Debug, Default)]
struct Meter {
    retired_instance_time: Duration,
    busy_time: Duration,
    /// Requests given an instance (leases).
    requests: u64,
    desired: u32,
    /// The most requests in flight on one instance in the current minute, and in the last.
    peak: u32,
    previous_peak: u32,
    peak_window: Option<Instant>,
}

/// How long one peak window lasts (`max_request_concurrencies` reports the higher of the
/// current and the previous window).
const PEAK_WINDOW: Duration = Duration::from_secs(60);

impl Meter {
    fn record_in_flight(&mut self, now: Instant, in_flight: u32) {
        match self.peak_window {
            Some(start) if now.duration_since(start) < PEAK_WINDOW => {}
            Some(start) if now.duration_since(start) < PEAK_WINDOW * 2 => {
                self.previous_peak = self.peak;
                self.peak = 0;
                self.peak_window = Some(start + PEAK_WINDOW);
            }
            _ => {
                self.previous_peak = 0;
                self.peak = 0;
                self.peak_window = Some(now);
            }
        }
        self.peak = self.peak.max(in_flight);
    }
}

impl PoolState {
    fn add(&mut self, upstream: Arc<dyn Upstream>) {
        let authority = upstream.addr().to_string().parse().expect("a socket address is a valid URI authority");
        let key = self.next_key;
        self.next_key += 1;
        let now = Instant::now();
        self.slots.push(Slot {
            key,
            upstream,
            authority,
            in_flight: 0,
            idle_since: now,
            joined: now,
            busy_since: None,
            gone: false,
        });
    }

    /// Accounts the instance time and busy time of a slot leaving the pool.
    fn retire(&mut self, slot: &Slot) {
        let now = Instant::now();
        self.meter.retired_instance_time += now.duration_since(slot.joined);
        if let Some(since) = slot.busy_since {
            self.meter.busy_time += now.duration_since(since);
        }
    }

    fn prune_gone(&mut self) {
        let mut gone = Vec::new();
        self.slots.retain_mut(|s| {
            if s.check_gone() {
                gone.push((s.joined, s.busy_since));
                false
            } else {
                true
            }
        });
        let now = Instant::now();
        for (joined, busy_since) in gone {
            self.meter.retired_instance_time += now.duration_since(joined);
            if let Some(since) = busy_since {
                self.meter.busy_time += now.duration_since(since);
            }
        }
    }

    /// Removes the slot at `i`, accounting its time.
    fn remove_slot(&mut self, i: usize) -> Slot {
        let slot = self.slots.remove(i);
        self.retire(&slot);
        slot
    }

    fn in_flight(&self) -> u32 {
        self.slots.iter().map(|s| s.in_flight).sum()
    }

    /// The slot a request should take: the `preferred` instance if it has room, else the
    /// least loaded one with room. Asks `is_gone` of the chosen instance only.
    /// How many requests wait in the queue.
    fn queued(&self) -> u32 {
        u32::try_from(self.waiting.len()).unwrap_or(u32::MAX)
    }

    /// Picks a slot for the queued request holding `ticket` if the requests queued before it
    /// leave one free (they take the first free slots).
    fn pick_in_turn(&mut self, ticket: u64) -> Option<usize> {
        let limit = self.config.scaling.container_concurrency.max(1);
        let ahead = self.waiting.range(..ticket).count();
        let free: usize =
            self.slots.iter().filter(|s| !s.gone).map(|s| limit.saturating_sub(s.in_flight) as usize).sum();
        if free > ahead { self.pick(None) } else { None }
    }

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
    /// Who the pool serves, for what it reports.
    owner: Arc<PoolOwner>,
    /// Instances the scaling loop started, and how long each took to become ready.
    startups: Histogram,
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
            .field("queued", &st.queued())
            .finish()
    }
}

/// A request's claim on one instance; dropping it frees the slot.
pub struct Lease {
    pool: Arc<RevisionPool>,
    key: u64,
    upstream: Arc<dyn Upstream>,
    authority: Authority,
    /// When the instance joined the pool.
    joined: Instant,
}

impl Lease {
    /// When the leased instance joined the pool: a request that began waiting before this
    /// waited for a cold start.
    pub fn instance_joined(&self) -> Instant {
        self.joined
    }

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
            let mut guard = self.pool.lock();
            let st = &mut *guard;
            if let Some(slot) = st.slots.iter_mut().find(|s| s.key == self.key) {
                slot.in_flight = slot.in_flight.saturating_sub(1);
                if slot.in_flight == 0 {
                    let now = Instant::now();
                    slot.idle_since = now;
                    if let Some(since) = slot.busy_since.take() {
                        st.meter.busy_time += now.duration_since(since);
                    }
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
/// gives the place back and lets the waiters behind it move up.
struct QueuePlace<'a> {
    pool: &'a RevisionPool,
    ticket: u64,
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        let others = {
            let mut st = self.pool.lock();
            st.waiting.remove(&self.ticket);
            !st.waiting.is_empty()
        };
        if others {
            self.pool.changed.notify_waiters();
        }
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

/// What a pool reports for metrics and usage metering ([`RevisionPool::report`]).
#[derive(Debug, Clone)]
pub struct PoolReport {
    pub owner: Arc<PoolOwner>,
    pub revision: String,
    /// Instances with at least one request in flight (Cloud Run's `active` state).
    pub active: u32,
    /// Instances with none (`idle`).
    pub idle: u32,
    pub starting: u32,
    pub in_flight: u32,
    pub queued: u32,
    /// The instances the autoscaler last asked for.
    pub desired: u32,
    /// The most requests in flight on one instance, over the last one to two minutes.
    pub max_concurrency: u32,
    /// Instance starts by the scaling loop (cold starts) and how long each took.
    pub startups: HistogramSnapshot,
    /// Summed lifetime of the pool's instances, from joining the pool until leaving it (or
    /// now): what Cloud Run bills when CPU is always allocated.
    pub instance_time: Duration,
    /// Summed time instances had at least one request in flight: what Cloud Run bills when
    /// CPU is only allocated during requests.
    pub busy_time: Duration,
    /// Requests the pool gave an instance (refused and timed-out queued requests are not).
    pub requests: u64,
    /// Each instance in the pool and what it uses now, read when the report was made
    /// ([`RevisionPool::report_with_usage`]; empty in a plain [`RevisionPool::report`]).
    pub instances: Vec<InstanceSample>,
}

/// One instance of a pool as [`RevisionPool::report`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSample {
    pub id: String,
    /// When it joined the pool (was ready).
    pub joined: Instant,
    /// `None`: the instance's implementation cannot tell, or it just went.
    pub usage: Option<crate::upstream::ResourceUsage>,
}

impl RevisionPool {
    /// Creates the pool and starts its scaling loop (which keeps min-instances warm).
    /// Must be called within a tokio runtime.
    pub fn start(revision: &str, config: PoolConfig, launcher: Arc<dyn Launcher>) -> Arc<RevisionPool> {
        RevisionPool::start_owned(PoolOwner::default(), revision, config, launcher)
    }

    /// [`RevisionPool::start`] for a pool that reports who it serves (labels of its metrics,
    /// usage per service).
    pub fn start_owned(
        owner: PoolOwner,
        revision: &str,
        config: PoolConfig,
        launcher: Arc<dyn Launcher>,
    ) -> Arc<RevisionPool> {
        let pool = Arc::new(RevisionPool {
            owner: Arc::new(owner),
            startups: Histogram::default(),
            revision: revision.to_owned(),
            protocol: config.protocol,
            launcher,
            request_timeout_ms: AtomicU64::new(millis(config.request_timeout)),
            session_affinity: AtomicBool::new(config.session_affinity),
            state: Mutex::new(PoolState {
                slots: Vec::new(),
                next_key: 0,
                starting: 0,
                waiting: BTreeSet::new(),
                next_ticket: 0,
                last_error: None,
                retry_after: None,
                drained: false,
                autoscaler: Autoscaler::new(config.scaling.clone(), Instant::now()),
                config,
                meter: Meter::default(),
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

    /// Who the pool serves.
    pub fn owner(&self) -> &Arc<PoolOwner> {
        &self.owner
    }

    /// Instance counts by state, the autoscaler's wish, startups and accounted time, without
    /// the instances' resource use (`instances` is empty): cheap, for usage metering.
    pub fn report(&self) -> PoolReport {
        self.report_of(false)
    }

    /// [`RevisionPool::report`] with each instance and what it uses now
    /// ([`Upstream::resource_usage`], read outside the pool's lock): for metrics.
    pub fn report_with_usage(&self) -> PoolReport {
        self.report_of(true)
    }

    fn report_of(&self, with_usage: bool) -> PoolReport {
        let now = Instant::now();
        let mut st = self.lock();
        st.prune_gone();
        let mut report = PoolReport {
            owner: self.owner.clone(),
            revision: self.revision.clone(),
            active: 0,
            idle: 0,
            starting: st.starting,
            in_flight: 0,
            queued: st.queued(),
            desired: st.meter.desired,
            max_concurrency: 0,
            startups: self.startups.snapshot(),
            instance_time: st.meter.retired_instance_time,
            busy_time: st.meter.busy_time,
            requests: st.meter.requests,
            instances: Vec::new(),
        };
        let mut upstreams = Vec::with_capacity(if with_usage { st.slots.len() } else { 0 });
        for slot in &st.slots {
            if with_usage {
                upstreams.push((slot.upstream.clone(), slot.joined));
            }
            if slot.in_flight > 0 {
                report.active += 1;
            } else {
                report.idle += 1;
            }
            report.in_flight += slot.in_flight;
            report.instance_time += now.duration_since(slot.joined);
            if let Some(since) = slot.busy_since {
                report.busy_time += now.duration_since(since);
            }
        }
        let in_window = st.meter.peak_window.is_some_and(|w| now.duration_since(w) < PEAK_WINDOW * 2);
        if in_window {
            report.max_concurrency = st.meter.peak.max(st.meter.previous_peak);
        }
        report.max_concurrency = report.max_concurrency.max(st.slots.iter().map(|s| s.in_flight).max().unwrap_or(0));
        drop(st);
        // Reading usage may take a system call per instance: never under the pool's lock.
        report.instances = upstreams
            .into_iter()
            .map(|(upstream, joined)| InstanceSample {
                id: upstream.id().to_owned(),
                joined,
                usage: upstream.resource_usage(),
            })
            .collect();
        report
    }

    pub fn stats(&self) -> PoolStats {
        let mut st = self.lock();
        let ready = st.slots.iter_mut().map(Slot::check_gone).filter(|gone| !gone).count();
        PoolStats {
            ready: u32::try_from(ready).unwrap_or(u32::MAX),
            starting: st.starting,
            in_flight: st.in_flight(),
            queued: st.queued(),
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

    /// Counts a request on slot `i` (and in the pool's meter). The caller releases the pool's
    /// lock, then calls [`PendingLease::started`] before handing the lease out.
    fn lease(self: &Arc<Self>, st: &mut PoolState, i: usize) -> PendingLease {
        let now = Instant::now();
        let slot = &mut st.slots[i];
        slot.in_flight += 1;
        if slot.in_flight == 1 {
            slot.busy_since = Some(now);
        }
        let lease = Lease {
            pool: self.clone(),
            key: slot.key,
            upstream: slot.upstream.clone(),
            authority: slot.authority.clone(),
            joined: slot.joined,
        };
        let in_flight = slot.in_flight;
        st.meter.requests += 1;
        st.meter.record_in_flight(now, in_flight);
        PendingLease(lease)
    }

    /// Claims a slot at once if an instance has room (the common, warm case: no waiting, no
    /// timers), preferring the instance `preferred` names when it has room. None once closed.
    pub fn try_acquire(self: &Arc<Self>, preferred: Option<&str>) -> Option<Lease> {
        if self.closed.is_cancelled() {
            return None;
        }
        let pending = {
            let mut st = self.lock();
            if !st.waiting.is_empty() {
                // Requests are queued: this one goes behind them.
                return None;
            }
            let i = st.pick(preferred)?;
            self.lease(&mut st, i)
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
        let mut place: Option<QueuePlace<'_>> = None;
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
                let picked = match &place {
                    Some(place) => st.pick_in_turn(place.ticket),
                    None if st.waiting.is_empty() => st.pick(None),
                    None => None,
                };
                if let Some(i) = picked {
                    let pending = self.lease(&mut st, i);
                    drop(st);
                    // Dropping the place (after the lock) wakes the waiters behind it.
                    drop(place);
                    return Ok(pending.started());
                }
                if place.is_none() {
                    if st.waiting.len() >= st.config.max_queue {
                        return Err(ProxyError::QueueFull);
                    }
                    let ticket = st.next_ticket;
                    st.next_ticket += 1;
                    st.waiting.insert(ticket);
                    place = Some(QueuePlace { pool: self, ticket });
                    if st.slots.is_empty() && st.starting == 0 {
                        // Scale from zero now, not at the next tick.
                        let sample = f64::from(st.queued());
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
            let slots = std::mem::take(&mut st.slots);
            for slot in &slots {
                st.retire(slot);
            }
            slots
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
