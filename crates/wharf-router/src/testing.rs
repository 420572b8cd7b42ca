//! Test doubles for the router's seam: fake upstreams that count the requests a test runs on
//! them, and a launcher whose starts can be held, failed and counted. Every change a test may
//! wait for is published on a `watch` channel, so tests wait on events, not sleeps.

use std::any::Any;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use wharf_autoscaler::ScalingConfig;

use crate::pool::{Lease, PoolConfig};
use crate::upstream::{BoxFuture, LaunchError, Launcher, Upstream};

#[derive(Debug)]
pub(crate) struct FakeUpstream {
    id: String,
    addr: SocketAddr,
    gone: AtomicBool,
    running: AtomicU32,
    peak: AtomicU32,
    /// Leases told to the instance ([`Upstream::request_started`]) and not yet ended.
    leased: AtomicU32,
}

impl FakeUpstream {
    pub(crate) fn new(id: &str, addr: SocketAddr) -> Arc<FakeUpstream> {
        Arc::new(FakeUpstream {
            id: id.to_owned(),
            addr,
            gone: AtomicBool::new(false),
            running: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            leased: AtomicU32::new(0),
        })
    }

    /// The instance exits: from now on it reports itself gone.
    pub(crate) fn kill(&self) {
        self.gone.store(true, Ordering::SeqCst);
    }

    /// Counts one request as running on this instance until the guard drops.
    pub(crate) fn enter(self: &Arc<Self>) -> Running {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Running(self.clone())
    }

    /// Leases begun on this instance and not ended, as the instance was told.
    pub(crate) fn leased(&self) -> u32 {
        self.leased.load(Ordering::SeqCst)
    }

    /// The most requests that ever ran on this instance at once.
    pub(crate) fn peak(&self) -> u32 {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Upstream for FakeUpstream {
    fn id(&self) -> &str {
        &self.id
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    fn request_started(&self) {
        self.leased.fetch_add(1, Ordering::SeqCst);
    }

    fn request_ended(&self) {
        let before = self.leased.fetch_sub(1, Ordering::SeqCst);
        assert!(before > 0, "a lease ended that never started");
    }
}

#[derive(Debug)]
pub(crate) struct Running(Arc<FakeUpstream>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The fake behind a lease.
pub(crate) fn fake(lease: &Lease) -> Arc<FakeUpstream> {
    let any: Arc<dyn Any + Send + Sync> = lease.upstream().clone();
    any.downcast().expect("tests only use fake upstreams")
}

/// A launcher of fake upstreams. Clones share their state.
#[derive(Debug, Clone)]
pub(crate) struct FakeLauncher(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    /// When set, a start completes only when [`FakeLauncher::release`] lets it.
    gated: bool,
    gate: Semaphore,
    /// The next starts fail with these reasons, in order.
    failures: Mutex<VecDeque<LaunchError>>,
    launches: watch::Sender<u32>,
    stopped: watch::Sender<Vec<String>>,
}

impl FakeLauncher {
    /// Starts complete at once; upstreams answer at `addr`.
    pub(crate) fn instant(addr: SocketAddr) -> FakeLauncher {
        FakeLauncher::new(addr, false)
    }

    /// Starts complete only when the test releases them.
    pub(crate) fn gated() -> FakeLauncher {
        FakeLauncher::new(unroutable(), true)
    }

    fn new(addr: SocketAddr, gated: bool) -> FakeLauncher {
        FakeLauncher(Arc::new(Inner {
            addr,
            gated,
            gate: Semaphore::new(0),
            failures: Mutex::new(VecDeque::new()),
            launches: watch::Sender::new(0),
            stopped: watch::Sender::new(Vec::new()),
        }))
    }

    pub(crate) fn arc(&self) -> Arc<dyn Launcher> {
        Arc::new(self.clone())
    }

    /// Lets `n` held starts complete.
    pub(crate) fn release(&self, n: usize) {
        self.0.gate.add_permits(n);
    }

    pub(crate) fn fail_next(&self, reason: &str) {
        self.0.failures.lock().unwrap().push_back(LaunchError::message(reason));
    }

    /// The next start is refused for lack of capacity on the machine.
    pub(crate) fn fail_next_no_capacity(&self, reason: &str) {
        let error = LaunchError::message(reason);
        self.0.failures.lock().unwrap().push_back(LaunchError::no_capacity(error));
    }

    /// How many starts were asked for.
    pub(crate) fn launches(&self) -> u32 {
        *self.0.launches.borrow()
    }

    pub(crate) async fn wait_launches(&self, n: u32) {
        within(self.0.launches.subscribe().wait_for(|count| *count >= n)).await.unwrap();
    }

    /// The instances stopped so far, sorted.
    pub(crate) fn stopped(&self) -> Vec<String> {
        let mut ids = self.0.stopped.borrow().clone();
        ids.sort();
        ids
    }

    pub(crate) async fn wait_stopped(&self, n: usize) -> Vec<String> {
        within(self.0.stopped.subscribe().wait_for(|ids| ids.len() >= n)).await.unwrap();
        self.stopped()
    }
}

impl Launcher for FakeLauncher {
    fn launch(&self) -> BoxFuture<Result<Arc<dyn Upstream>, LaunchError>> {
        let inner = self.0.clone();
        Box::pin(async move {
            let mut n = 0;
            inner.launches.send_modify(|count| {
                *count += 1;
                n = *count;
            });
            let failure = inner.failures.lock().unwrap().pop_front();
            if inner.gated {
                inner.gate.acquire().await.unwrap().forget();
            }
            match failure {
                Some(error) => Err(error),
                None => Ok(FakeUpstream::new(&format!("i{n}"), inner.addr) as Arc<dyn Upstream>),
            }
        })
    }

    fn stop(&self, upstream: Arc<dyn Upstream>) -> BoxFuture<()> {
        let inner = self.0.clone();
        Box::pin(async move { inner.stopped.send_modify(|ids| ids.push(upstream.id().to_owned())) })
    }
}

/// Awaits `future`, failing the test if it takes longer than ten minutes (of paused time,
/// which passes in a blink, or of real time), so that a broken behaviour fails rather than
/// hangs.
pub(crate) async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(600), future).await.expect("the awaited event never came")
}

/// An address nothing is expected to answer on, for upstreams no test connects to.
pub(crate) fn unroutable() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}

/// A pool config with the given concurrency and bounds, otherwise Cloud Run's defaults.
pub(crate) fn config(concurrency: u32, min_instances: u32, max_instances: u32) -> PoolConfig {
    PoolConfig {
        scaling: ScalingConfig {
            container_concurrency: concurrency,
            min_instances,
            max_instances,
            ..ScalingConfig::default()
        },
        request_timeout: Duration::from_secs(300),
        max_queue: 100,
        queue_timeout: Duration::from_secs(30),
        session_affinity: false,
        protocol: crate::pool::UpstreamProtocol::Http1,
    }
}

/// Access rules of a service with the invoker IAM check off (Cloud Run's
/// `invokerIamDisabled`), for tests about routing rather than access.
pub(crate) fn open_access() -> Arc<crate::access::Access> {
    Arc::new(crate::access::Access {
        resource: wharf_iam::Resource::service("test", "us-central1", "hello"),
        hosts: vec!["hello.example.com".to_owned()],
        invoker_iam_disabled: true,
        ingress: crate::access::IngressSetting::All,
    })
}

/// An [`Iam`](wharf_iam::Iam) over a temporary database, with the issuer URL set, and the
/// owner's token.
pub(crate) fn iam() -> (tempfile::TempDir, wharf_iam::Iam, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = wharf_store::Store::open(&dir.path().join("state.db")).expect("store");
    let iam = wharf_iam::Iam::open(db, dir.path()).expect("iam");
    iam.issuer.set_url("http://127.0.0.1:8000");
    let token = std::fs::read_to_string(dir.path().join(wharf_iam::OWNER_TOKEN_FILE)).expect("owner token");
    (dir, iam, token.trim().to_owned())
}
