//! The pool against a fake launcher, in paused time: a minute of idling takes microseconds.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use tokio::time::Instant;

use super::{PoolConfig, PoolStats, RevisionPool};
use crate::error::ProxyError;
use crate::testing::{FakeLauncher, FakeUpstream, config, fake, unroutable, within};

fn stats(ready: u32, starting: u32, in_flight: u32, queued: u32) -> PoolStats {
    PoolStats { ready, starting, in_flight, queued }
}

/// What an acquire that must fail failed with: its status and message.
fn failure<T: std::fmt::Debug>(result: Result<T, ProxyError>) -> (StatusCode, String) {
    let error = result.expect_err("the acquire should fail");
    (error.status(), error.to_string())
}

#[tokio::test(start_paused = true)]
async fn a_warm_instance_is_claimed_without_starting_another() {
    let launcher = FakeLauncher::gated();
    let pool = RevisionPool::start("hello-00001", config(10, 0, 10), launcher.arc());
    pool.adopt(FakeUpstream::new("warm", unroutable()));

    let first = pool.try_acquire(None).expect("the warm instance has room");
    let second = pool.try_acquire(None).expect("the warm instance has room for another");
    assert_eq!(first.upstream().id(), "warm");
    assert_eq!(second.upstream().id(), "warm");
    assert_eq!(pool.stats(), stats(1, 0, 2, 0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(launcher.launches(), 0);

    drop((first, second));
    assert_eq!(pool.stats(), stats(1, 0, 0, 0));
}

/// What a throttled instance relies on to get CPU: every lease tells its instance it started
/// before the caller gets it (a warm claim and a queued one alike) and that it ended when
/// dropped.
#[tokio::test(start_paused = true)]
async fn the_instance_is_told_when_each_lease_starts_and_ends() {
    let launcher = FakeLauncher::gated();
    let pool = RevisionPool::start("hello-00001", config(2, 0, 1), launcher.arc());
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(|lease| (fake(&lease).leased(), lease)) }
    });
    launcher.wait_launches(1).await;
    launcher.release(1);
    let (told, queued_lease) = within(queued).await.unwrap().expect("the queued request is served");
    assert_eq!(told, 1, "the queued lease was handed out before the instance was told");
    let upstream = fake(&queued_lease);
    let warm = pool.try_acquire(None).expect("room for a second request");
    assert_eq!(upstream.leased(), 2);
    drop(queued_lease);
    assert_eq!(upstream.leased(), 1);
    drop(warm);
    assert_eq!(upstream.leased(), 0);
}

#[tokio::test(start_paused = true)]
async fn in_flight_per_instance_never_exceeds_container_concurrency() {
    let launcher = FakeLauncher::instant(unroutable());
    let pool = RevisionPool::start("hello-00001", config(3, 0, 4), launcher.arc());

    let requests: Vec<_> = (0..40)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let lease = pool.acquire().await?;
                let upstream = fake(&lease);
                let _running = upstream.enter();
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, ProxyError>(upstream)
            })
        })
        .collect();
    let mut upstreams: Vec<Arc<FakeUpstream>> = Vec::new();
    for request in requests {
        let upstream = within(request).await.unwrap().expect("every request is served");
        if !upstreams.iter().any(|u| Arc::ptr_eq(u, &upstream)) {
            upstreams.push(upstream);
        }
    }

    assert_eq!(launcher.launches(), 4);
    let peaks: Vec<u32> = upstreams.iter().map(|u| u.peak()).collect();
    assert_eq!(peaks, vec![3; 4], "each instance runs up to, never past, its concurrency");
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_gets_the_instance_when_it_is_ready() {
    let launcher = FakeLauncher::gated();
    let pool = RevisionPool::start("hello-00001", config(1, 0, 1), launcher.arc());

    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(|lease| lease.upstream().id().to_owned()) }
    });
    launcher.wait_launches(1).await;
    assert_eq!(pool.stats(), stats(0, 1, 0, 1));
    assert!(!waiter.is_finished());

    launcher.release(1);
    assert_eq!(within(waiter).await.unwrap().expect("served once the instance is ready"), "i1");
    assert_eq!(pool.stats(), stats(1, 0, 0, 0));
}

/// The queue is first come, first served: when an instance becomes ready, a request that
/// queued later cannot take it from one that queued earlier, whichever is woken first (a
/// later one taking it left the earlier one a 429 when the machine had no room for more).
#[tokio::test(start_paused = true)]
async fn a_ready_instance_goes_to_the_oldest_queued_request() {
    let launcher = FakeLauncher::gated();
    let pool = RevisionPool::start("hello-00001", config(1, 0, 1), launcher.arc());
    let mut older = Box::pin(pool.acquire());
    let mut newer = Box::pin(pool.acquire());
    assert!(futures::poll!(older.as_mut()).is_pending());
    assert!(futures::poll!(newer.as_mut()).is_pending());
    launcher.wait_launches(1).await;

    launcher.release(1);
    tokio::task::yield_now().await;
    assert!(futures::poll!(newer.as_mut()).is_pending(), "the newer request jumped the queue");
    assert!(pool.try_acquire(None).is_none(), "a new request jumped the queue");
    let std::task::Poll::Ready(lease) = futures::poll!(older.as_mut()) else { panic!("the oldest request waits") };
    let lease = lease.expect("the oldest request is served");
    assert!(futures::poll!(newer.as_mut()).is_pending());
    drop(lease);
    let served = tokio::time::timeout(Duration::from_secs(1), newer).await.expect("the newer one is served next");
    assert_eq!(served.expect("served").upstream().id(), "i1");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_requests_and_cancelled_waiters_give_their_place_back() {
    let launcher = FakeLauncher::gated();
    let pool = RevisionPool::start("hello-00001", PoolConfig { max_queue: 2, ..config(1, 0, 1) }, launcher.arc());

    let mut first = Box::pin(pool.acquire());
    let mut second = Box::pin(pool.acquire());
    assert!(futures::poll!(first.as_mut()).is_pending());
    assert!(futures::poll!(second.as_mut()).is_pending());
    assert_eq!(pool.stats().queued, 2);
    assert_eq!(failure(pool.acquire().await), (StatusCode::TOO_MANY_REQUESTS, "the request queue is full".to_owned()));

    drop((first, second));
    assert_eq!(pool.stats().queued, 0);
    let mut third = Box::pin(pool.acquire());
    assert!(futures::poll!(third.as_mut()).is_pending());
    assert_eq!(pool.stats().queued, 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_no_longer_than_the_queue_timeout() {
    let launcher = FakeLauncher::gated();
    let queue_timeout = Duration::from_secs(5);
    let pool = RevisionPool::start("hello-00001", PoolConfig { queue_timeout, ..config(1, 0, 1) }, launcher.arc());

    let asked = Instant::now();
    let answer = failure(pool.acquire().await);
    assert_eq!(answer, (StatusCode::SERVICE_UNAVAILABLE, "no instance became available in time".to_owned()));
    assert_eq!(asked.elapsed().as_secs(), queue_timeout.as_secs());
    assert_eq!(pool.stats(), stats(0, 1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_first_request_scales_from_zero() {
    let launcher = FakeLauncher::instant(unroutable());
    let pool = RevisionPool::start("hello-00001", config(80, 0, 10), launcher.arc());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!((launcher.launches(), pool.stats()), (0, stats(0, 0, 0, 0)));

    let lease = pool.acquire().await.expect("an instance is started for the request");
    assert_eq!(lease.upstream().id(), "i1");
    assert_eq!((launcher.launches(), pool.stats()), (1, stats(1, 0, 1, 0)));
}

#[tokio::test(start_paused = true)]
async fn an_idle_revision_scales_to_zero_after_the_idle_timeout() {
    let launcher = FakeLauncher::instant(unroutable());
    let scaling = config(80, 0, 10);
    let idle_timeout = scaling.scaling.idle_timeout;
    let pool = RevisionPool::start("hello-00001", scaling, launcher.arc());

    drop(pool.acquire().await.expect("served"));
    let idle_since = Instant::now();
    assert_eq!(launcher.wait_stopped(1).await, vec!["i1"]);
    assert!(idle_since.elapsed() >= idle_timeout, "stopped after {:?}", idle_since.elapsed());
    assert_eq!(pool.stats(), stats(0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_idle_revision_scales_down_to_min_instances() {
    let launcher = FakeLauncher::instant(unroutable());
    let pool = RevisionPool::start("hello-00001", config(1, 1, 10), launcher.arc());
    let first = pool.acquire().await.expect("served");
    let second = pool.acquire().await.expect("served");
    assert_eq!(pool.stats(), stats(2, 0, 2, 0));

    drop((first, second));
    assert_eq!(launcher.wait_stopped(1).await.len(), 1);
    tokio::time::sleep(Duration::from_secs(180)).await;
    assert_eq!(launcher.stopped().len(), 1, "min-instances stay warm");
    assert_eq!(pool.stats(), stats(1, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn max_instances_bounds_how_many_start() {
    let launcher = FakeLauncher::gated();
    let pool = RevisionPool::start("hello-00001", config(1, 0, 2), launcher.arc());
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let lease = pool.acquire().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, ProxyError>(lease.upstream().id().to_owned())
            })
        })
        .collect();
    launcher.wait_launches(2).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!((launcher.launches(), pool.stats()), (2, stats(0, 2, 0, 5)));

    launcher.release(2);
    let mut served = Vec::new();
    for request in requests {
        served.push(within(request).await.unwrap().expect("served within the queue timeout"));
    }
    served.sort();
    assert_eq!(served.len(), 5);
    served.dedup();
    assert_eq!(served, vec!["i1", "i2"]);
    assert_eq!(launcher.launches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_is_explained_and_retried_after_a_back_off() {
    let launcher = FakeLauncher::instant(unroutable());
    launcher.fail_next("exec format error");
    let pool = RevisionPool::start("hello-00001", config(80, 0, 10), launcher.arc());

    let answer = failure(pool.acquire().await);
    let failed_at = Instant::now();
    let reason = "an instance could not be started: exec format error".to_owned();
    assert_eq!(answer, (StatusCode::SERVICE_UNAVAILABLE, reason.clone()));
    assert_eq!(launcher.launches(), 1);
    // Until a start succeeds, requests are answered with the reason at once.
    assert_eq!(failure(pool.acquire().await), (StatusCode::SERVICE_UNAVAILABLE, reason));

    launcher.wait_launches(2).await;
    assert!(failed_at.elapsed() >= super::scaling::RETRY_BACKOFF, "retried after {:?}", failed_at.elapsed());
    assert_eq!(pool.acquire().await.expect("the retry started an instance").upstream().id(), "i2");
}

#[tokio::test(start_paused = true)]
async fn a_gone_instance_is_dropped_and_not_routed_to() {
    let launcher = FakeLauncher::gated();
    let pool = RevisionPool::start("hello-00001", config(10, 0, 10), launcher.arc());
    let dying = FakeUpstream::new("dying", unroutable());
    pool.adopt(dying.clone());
    pool.adopt(FakeUpstream::new("healthy", unroutable()));
    let before = pool.try_acquire(None).expect("room");
    assert_eq!(before.upstream().id(), "dying");

    dying.kill();
    assert_eq!(pool.stats().ready, 1);
    let leases: Vec<_> = (0..5).map(|_| pool.try_acquire(Some("dying")).expect("room")).collect();
    let ids: Vec<&str> = leases.iter().map(|l| l.upstream().id()).collect();
    assert_eq!(ids, vec!["healthy"; 5]);
    assert_eq!(pool.acquire().await.expect("room").upstream().id(), "healthy");
}

#[tokio::test(start_paused = true)]
async fn close_drains_in_flight_requests_then_stops_every_instance_even_starting_ones() {
    let launcher = FakeLauncher::gated();
    let pool = RevisionPool::start("hello-00001", config(1, 0, 2), launcher.arc());
    pool.adopt(FakeUpstream::new("warm", unroutable()));
    let in_flight = pool.try_acquire(None).expect("room");
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(|lease| lease.upstream().id().to_owned()) }
    });
    launcher.wait_launches(1).await;

    let closing = tokio::spawn({
        let pool = pool.clone();
        async move { pool.close(Duration::from_secs(10)).await }
    });
    let answer = failure(within(queued).await.unwrap());
    assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(pool.try_acquire(None).is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((closing.is_finished(), launcher.stopped().len()), (false, 0));

    drop(in_flight);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((closing.is_finished(), launcher.stopped().len()), (false, 0), "waits for the start");

    launcher.release(1);
    within(closing).await.unwrap();
    assert_eq!(launcher.stopped(), vec!["i1", "warm"]);
    assert_eq!(pool.stats(), stats(0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn close_stops_a_busy_instance_once_the_drain_period_is_over() {
    let launcher = FakeLauncher::gated();
    let pool = RevisionPool::start("hello-00001", config(1, 0, 2), launcher.arc());
    pool.adopt(FakeUpstream::new("busy", unroutable()));
    let _in_flight = pool.try_acquire(None).expect("room");

    let closing = Instant::now();
    pool.close(Duration::from_secs(10)).await;
    assert_eq!(closing.elapsed().as_secs(), 10);
    assert_eq!(launcher.stopped(), vec!["busy"]);
}

#[tokio::test(start_paused = true)]
async fn set_config_changes_scaling_live() {
    let launcher = FakeLauncher::instant(unroutable());
    let pool = RevisionPool::start("hello-00001", config(80, 0, 10), launcher.arc());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(launcher.launches(), 0);

    let timeout = Duration::from_secs(42);
    pool.set_config(PoolConfig { request_timeout: timeout, session_affinity: true, ..config(80, 2, 10) });
    launcher.wait_launches(2).await;
    assert_eq!((pool.request_timeout(), pool.session_affinity()), (timeout, true));
    let _lease = pool.acquire().await.expect("served");
    assert_eq!(pool.stats(), stats(2, 0, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn session_affinity_is_honoured_only_within_concurrency() {
    let launcher = FakeLauncher::gated();
    let pool = RevisionPool::start("hello-00001", config(2, 0, 2), launcher.arc());
    pool.adopt(FakeUpstream::new("a", unroutable()));
    pool.adopt(FakeUpstream::new("b", unroutable()));

    let mut leases = Vec::new();
    let mut take = |preferred| {
        let lease = pool.try_acquire(preferred);
        let id = lease.as_ref().map(|l| l.upstream().id().to_owned());
        leases.extend(lease);
        id
    };
    assert_eq!(take(Some("b")).as_deref(), Some("b"));
    assert_eq!(take(Some("b")).as_deref(), Some("b"));
    assert_eq!(take(Some("b")).as_deref(), Some("a"), "b is full: another instance serves");
    assert_eq!(take(Some("gone-long-ago")).as_deref(), Some("a"));
    assert_eq!(take(Some("b")), None);
}

/// Clients that give up while queued (a disconnect, a client timeout, an HTTP/2 stream reset:
/// each drops the request's future) give their queue places back: the counter returns to
/// zero, the idle instance still scales to zero, and a later request is served normally.
#[tokio::test(start_paused = true)]
async fn abandoned_queued_requests_give_everything_back_and_the_instance_scales_to_zero() {
    let launcher = FakeLauncher::instant(unroutable());
    let pool = RevisionPool::start("hello-00001", PoolConfig { max_queue: 200, ..config(1, 0, 1) }, launcher.arc());
    let busy = pool.acquire().await.expect("served");

    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire().await.map(|lease| lease.upstream().id().to_owned()) })
        })
        .collect();
    within(async {
        while pool.stats().queued < 100 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(pool.stats(), stats(1, 0, 1, 100));
    for waiter in &waiters {
        waiter.abort();
    }
    for waiter in waiters {
        assert!(within(waiter).await.unwrap_err().is_cancelled());
    }
    assert_eq!(pool.stats(), stats(1, 0, 1, 0));

    drop(busy);
    assert_eq!(launcher.wait_stopped(1).await, vec!["i1"]);
    assert_eq!(pool.stats(), stats(0, 0, 0, 0));
    let later = pool.acquire().await.expect("a later request is served");
    assert_eq!(later.upstream().id(), "i2");
}

#[tokio::test(start_paused = true)]
async fn a_request_needing_an_instance_the_machine_has_no_room_for_gets_429_with_the_reason() {
    let launcher = FakeLauncher::instant(unroutable());
    let pool = RevisionPool::start("hello-00001", config(1, 0, 5), launcher.arc());
    pool.adopt(FakeUpstream::new("busy", unroutable()));
    let busy = pool.try_acquire(None).expect("the adopted instance has room");
    let reason = "wharf: no capacity: instances use 256 MiB of 256 MiB (--instance-memory-limit); \
                  this instance needs 128 MiB";
    launcher.fail_next_no_capacity(reason);

    let answer = failure(within(pool.acquire()).await);
    assert_eq!(answer, (StatusCode::TOO_MANY_REQUESTS, format!("no capacity for another instance: {reason}")));
    assert_eq!(launcher.launches(), 1);
    let error = pool.acquire().await.expect_err("still backing off");
    assert!(error.retryable(), "a 429 for capacity tells the client to retry");

    // Past the back-off (room came back), a request waits for a new start and gets it.
    tokio::time::sleep(super::scaling::RETRY_BACKOFF).await;
    let lease = within(pool.acquire()).await.expect("a new instance serves it");
    assert_eq!(lease.upstream().id(), "i2");
    drop((busy, lease));
}

#[tokio::test(start_paused = true)]
async fn the_report_counts_instance_time_and_busy_time_separately_and_instances_by_state() {
    // Min-instances 2: the scaling loop keeps both instances.
    let pool = RevisionPool::start("hello-00001", config(10, 2, 10), FakeLauncher::gated().arc());
    let a = FakeUpstream::new("a", unroutable());
    pool.adopt(a.clone());
    pool.adopt(FakeUpstream::new("b", unroutable()));
    // Two overlapping requests on one instance for 3 s count 3 s of busy time, not 6.
    let first = pool.try_acquire(Some("a")).unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = pool.try_acquire(Some("a")).unwrap();
    let report = pool.report();
    assert_eq!((report.active, report.idle, report.in_flight, report.max_concurrency), (1, 1, 2, 2));
    tokio::time::advance(Duration::from_secs(2)).await;
    drop((first, second));
    tokio::time::advance(Duration::from_secs(7)).await;
    let report = pool.report();
    assert_eq!(report.busy_time, Duration::from_secs(3));
    assert_eq!(report.instance_time, Duration::from_secs(20), "two instances for 10 s");
    // An instance that leaves keeps its time in the report.
    a.kill();
    assert_eq!(pool.report().instance_time, Duration::from_secs(20));
    tokio::time::advance(Duration::from_secs(5)).await;
    let report = pool.report();
    assert_eq!((report.active, report.idle), (0, 1));
    assert_eq!(report.instance_time, Duration::from_secs(25), "a: 10 s until it was found gone, b: 15 s");
}
