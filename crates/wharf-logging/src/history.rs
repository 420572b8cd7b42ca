//! The last hour of each service's metrics, in memory, for charts (the console's service
//! page): request count by response class, latency percentiles and instance count, one
//! point per [`STEP`].
//!
//! A server task calls [`MetricsHistory::sample`] every [`STEP`] with a fresh
//! [`MetricsSnapshot`]; each sample turns the counters' growth since the previous sample into
//! one [`Point`] per service (requests by class, the percentiles of the latencies observed in
//! that interval, instances at the end of it). Memory is bounded: at most [`POINTS`] points
//! per service (an hour), and a service's history is dropped as soon as a snapshot no longer
//! has any of its revisions (the service was deleted). [`MetricsHistory::series`] adds the
//! interval still in progress, computed from a snapshot taken when asked, so a chart shows
//! a request within a second, not at the next sample.
//!
//! Counters are per revision; a revision deleted between two samples simply stops
//! contributing (its growth in that last interval is lost, never counted negative).
//! The history is not persisted: a restarted server starts an empty hour.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wharf_router::observe::LATENCY_BOUNDS;

use crate::metrics::{MetricsSnapshot, RevisionLabels, RevisionSnapshot};

/// One point per this much time.
pub const STEP: Duration = Duration::from_secs(10);
/// How far back the history reaches.
pub const WINDOW: Duration = Duration::from_secs(60 * 60);
/// Points kept per service: one window.
pub const POINTS: usize = 360;

/// Requests by response class over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClassCounts {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl ClassCounts {
    fn add(&mut self, class: u16, n: u64) {
        let slot = match class {
            1 => &mut self.c1xx,
            2 => &mut self.c2xx,
            3 => &mut self.c3xx,
            4 => &mut self.c4xx,
            _ => &mut self.c5xx,
        };
        *slot += n;
    }

    fn merge(&mut self, other: &ClassCounts) {
        for (class, n) in other.by_class() {
            self.add(class, n);
        }
    }

    fn by_class(&self) -> [(u16, u64); 5] {
        [(1, self.c1xx), (2, self.c2xx), (3, self.c3xx), (4, self.c4xx), (5, self.c5xx)]
    }

    pub fn total(&self) -> u64 {
        self.by_class().iter().map(|(_, n)| n).sum()
    }
}

/// Latency percentiles in milliseconds, estimated from histogram buckets the way
/// Prometheus' `histogram_quantile` does (linear within a bucket; above the last bound, the
/// last bound).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Instances at the end of an interval, by Cloud Run's `instance_count` states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Instances {
    pub active: u32,
    pub idle: u32,
}

/// One interval of a service's metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// End of the interval, seconds since the Unix epoch.
    pub end_time: u64,
    /// The interval's length in seconds (the one in progress is shorter than [`STEP`]).
    pub seconds: u64,
    pub requests: ClassCounts,
    /// `None` when no request was answered in the interval.
    pub latency_ms: Option<Percentiles>,
    pub instances: Instances,
}

/// What [`MetricsHistory::series`] returns: a service's points, oldest first, and the
/// whole window's totals (percentiles over all its requests, not an average of points).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    pub step_seconds: u64,
    pub window_seconds: u64,
    pub points: Vec<Point>,
    pub total_requests: ClassCounts,
    pub total_latency_ms: Option<Percentiles>,
    pub peak_instances: u32,
}

/// Which service a point belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ServiceKey {
    project: String,
    location: String,
    service: String,
}

impl ServiceKey {
    fn of(labels: &RevisionLabels) -> ServiceKey {
        ServiceKey {
            project: labels.project_id.clone(),
            location: labels.location.clone(),
            service: labels.service_name.clone(),
        }
    }
}

/// A revision's counters as of the last sample.
#[derive(Debug, Clone, Default)]
struct Counters {
    by_class: ClassCounts,
    /// Per bucket (not cumulative), [`LATENCY_BOUNDS`] plus `+Inf`.
    latency_buckets: Vec<u64>,
}

impl Counters {
    fn of(revision: &RevisionSnapshot) -> Counters {
        let mut by_class = ClassCounts::default();
        for (code, n) in &revision.requests_by_code {
            by_class.add(code.map_or(5, |c| c / 100), *n);
        }
        let latency = &revision.latency;
        let mut latency_buckets = Vec::with_capacity(latency.cumulative.len() + 1);
        let mut below = 0;
        for cumulative in &latency.cumulative {
            latency_buckets.push(cumulative.saturating_sub(below));
            below = *cumulative;
        }
        latency_buckets.push(latency.count.saturating_sub(below));
        Counters { by_class, latency_buckets }
    }
}

/// One interval's growth for one service, before it becomes a [`Point`].
#[derive(Debug, Clone, Default)]
struct Growth {
    requests: ClassCounts,
    latency_buckets: Vec<u64>,
    instances: Instances,
}

impl Growth {
    fn add_buckets(&mut self, buckets: &[u64]) {
        if self.latency_buckets.len() < buckets.len() {
            self.latency_buckets.resize(buckets.len(), 0);
        }
        for (sum, n) in self.latency_buckets.iter_mut().zip(buckets) {
            *sum += n;
        }
    }

    fn point(self, end_time: u64, seconds: u64) -> Point {
        Point {
            end_time,
            seconds,
            requests: self.requests,
            latency_ms: percentiles(&self.latency_buckets),
            instances: self.instances,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    services: HashMap<ServiceKey, ServiceHistory>,
    last: HashMap<RevisionLabels, Counters>,
    last_sample: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct ServiceHistory {
    points: VecDeque<Point>,
    /// Latency buckets of each kept point, for the window's percentiles.
    buckets: VecDeque<Vec<u64>>,
}

/// The server's hour of per-service metrics. Shared (`Arc`) between the sampling task and
/// the API.
#[derive(Debug, Default)]
pub struct MetricsHistory {
    state: Mutex<State>,
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl MetricsHistory {
    pub fn new() -> MetricsHistory {
        MetricsHistory::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the interval since the previous sample with `snapshot` taken at `now`: one
    /// point per service that has a revision in `snapshot`; services without one are
    /// forgotten.
    pub fn sample(&self, snapshot: &MetricsSnapshot, now: SystemTime) {
        let mut state = self.lock();
        let seconds = state.last_sample.and_then(|t| now.duration_since(t).ok()).map_or(0, |d| d.as_secs());
        let growth = growth_since(&state.last, snapshot);
        state.last = snapshot.revisions.iter().map(|r| (r.labels.clone(), Counters::of(r))).collect();
        state.last_sample = Some(now);
        state.services.retain(|key, _| growth.contains_key(key));
        let end_time = unix_seconds(now);
        for (key, growth) in growth {
            let history = state.services.entry(key).or_default();
            let buckets = growth.latency_buckets.clone();
            history.points.push_back(growth.point(end_time, seconds));
            history.buckets.push_back(buckets);
            while history.points.len() > POINTS {
                history.points.pop_front();
                history.buckets.pop_front();
            }
        }
    }

    /// A service's points over the last `window` (at most [`WINDOW`]) before `now`, with
    /// the interval in progress computed from `snapshot` as the last point. Empty when the
    /// service has had no revision serving.
    pub fn series(
        &self,
        snapshot: &MetricsSnapshot,
        project: &str,
        location: &str,
        service: &str,
        window: Duration,
        now: SystemTime,
    ) -> Series {
        let window = window.min(WINDOW);
        let key =
            ServiceKey { project: project.to_owned(), location: location.to_owned(), service: service.to_owned() };
        let state = self.lock();
        let since = unix_seconds(now).saturating_sub(window.as_secs());
        let mut points = Vec::new();
        let mut all_buckets = Growth::default();
        if let Some(history) = state.services.get(&key) {
            for (point, buckets) in history.points.iter().zip(&history.buckets) {
                if point.end_time > since {
                    points.push(point.clone());
                    all_buckets.add_buckets(buckets);
                }
            }
        }
        let mut live = growth_since(&state.last, snapshot);
        if let Some(growth) = live.remove(&key) {
            let seconds = state.last_sample.and_then(|t| now.duration_since(t).ok()).map_or(0, |d| d.as_secs());
            all_buckets.add_buckets(&growth.latency_buckets);
            points.push(growth.point(unix_seconds(now), seconds));
        }
        let mut total_requests = ClassCounts::default();
        for point in &points {
            total_requests.merge(&point.requests);
        }
        Series {
            step_seconds: STEP.as_secs(),
            window_seconds: window.as_secs(),
            peak_instances: points.iter().map(|p| p.instances.active + p.instances.idle).max().unwrap_or(0),
            total_latency_ms: percentiles(&all_buckets.latency_buckets),
            total_requests,
            points,
        }
    }
}

/// Each service's growth from the counters `last` to `snapshot`, with its instances now.
fn growth_since(last: &HashMap<RevisionLabels, Counters>, snapshot: &MetricsSnapshot) -> HashMap<ServiceKey, Growth> {
    let mut services: HashMap<ServiceKey, Growth> = HashMap::new();
    for revision in &snapshot.revisions {
        let growth = services.entry(ServiceKey::of(&revision.labels)).or_default();
        let now = Counters::of(revision);
        let before = last.get(&revision.labels).cloned().unwrap_or_default();
        for (class, n) in now.by_class.by_class() {
            let was = before.by_class.by_class()[usize::from(class - 1)].1;
            growth.requests.add(class, n.saturating_sub(was));
        }
        let grown: Vec<u64> = now
            .latency_buckets
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(before.latency_buckets.get(i).copied().unwrap_or(0)))
            .collect();
        growth.add_buckets(&grown);
        if let Some(pool) = &revision.pool {
            growth.instances.active += pool.active;
            growth.instances.idle += pool.idle;
        }
    }
    services
}

/// p50, p95 and p99 in milliseconds of observations counted per bucket of
/// [`LATENCY_BOUNDS`] (plus `+Inf` last); `None` without observations.
fn percentiles(buckets: &[u64]) -> Option<Percentiles> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let quantile = |q: f64| -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, n) in buckets.iter().enumerate() {
            let Some(upper) = LATENCY_BOUNDS.get(i) else {
                // Above the last bound: all that is known is "more than it".
                return LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1];
            };
            #[allow(clippy::cast_precision_loss)]
            let reached = (below + n) as f64;
            if *n > 0 && reached >= rank {
                let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
                #[allow(clippy::cast_precision_loss)]
                let into = (rank - below as f64) / *n as f64;
                return lower + (upper - lower) * into;
            }
            below += n;
        }
        LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1]
    };
    let ms = |q| (quantile(q) * 1000.0 * 1000.0).round() / 1000.0;
    Some(Percentiles { p50: ms(0.50), p95: ms(0.95), p99: ms(0.99) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use wharf_router::observe::Histogram;

    fn revision(service: &str, revision: &str, codes: &[(u16, u64)], latencies_ms: &[u64]) -> RevisionSnapshot {
        let histogram = Histogram::default();
        for ms in latencies_ms {
            histogram.observe(Duration::from_millis(*ms));
        }
        RevisionSnapshot {
            labels: RevisionLabels {
                project_id: "demo".into(),
                location: "us-central1".into(),
                service_name: service.into(),
                revision_name: revision.into(),
            },
            requests_by_code: codes.iter().map(|(c, n)| (Some(*c), *n)).collect::<BTreeMap<_, _>>(),
            latency: histogram.snapshot(),
            cold_start_requests: 0,
            pool: None,
            utilization: None,
        }
    }

    fn snapshot(revisions: Vec<RevisionSnapshot>) -> MetricsSnapshot {
        MetricsSnapshot { revisions, surface_requests: Vec::new(), request_log_dropped: 0 }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    #[test]
    fn each_sample_is_the_growth_since_the_last_by_class_and_the_live_interval_is_added() {
        let history = MetricsHistory::new();
        history.sample(&snapshot(vec![revision("web", "web-1", &[(200, 3)], &[1, 1, 1])]), at(0));
        let later = snapshot(vec![
            revision("web", "web-1", &[(200, 8), (404, 2)], &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
            revision("web", "web-2", &[(500, 1)], &[200]),
            revision("other", "other-1", &[(200, 7)], &[]),
        ]);
        history.sample(&later, at(10));
        let series = history.series(&later, "demo", "us-central1", "web", WINDOW, at(15));
        assert_eq!(series.points.len(), 3, "two samples and the live interval: {series:?}");
        assert_eq!(series.points[0].requests.total(), 3);
        let second = &series.points[1];
        assert_eq!((second.requests.c2xx, second.requests.c4xx, second.requests.c5xx), (5, 2, 1));
        assert_eq!(second.seconds, 10);
        assert_eq!(series.points[2].requests.total(), 0, "nothing since the last sample");
        assert_eq!(series.points[2].seconds, 5);
        assert_eq!((series.total_requests.c2xx, series.total_requests.c4xx, series.total_requests.c5xx), (8, 2, 1));

        // Requests after the last sample show at once in the live point.
        let live = snapshot(vec![revision("web", "web-1", &[(200, 12), (404, 2)], &[1; 14])]);
        let series = history.series(&live, "demo", "us-central1", "web", WINDOW, at(16));
        assert_eq!(series.points.last().unwrap().requests.c2xx, 4);
    }

    #[test]
    fn percentiles_come_from_the_intervals_latencies_only() {
        let history = MetricsHistory::new();
        // 100 fast requests, then an interval of 100 requests of which 10 were slow.
        let fast: Vec<u64> = vec![2; 100];
        history.sample(&snapshot(vec![revision("web", "web-1", &[(200, 100)], &fast)]), at(0));
        let mut mixed = fast.clone();
        mixed.extend(std::iter::repeat_n(2, 90));
        mixed.extend(std::iter::repeat_n(800, 10));
        history.sample(&snapshot(vec![revision("web", "web-1", &[(200, 200)], &mixed)]), at(10));
        let series = history.series(
            &snapshot(vec![revision("web", "web-1", &[(200, 200)], &mixed)]),
            "demo",
            "us-central1",
            "web",
            WINDOW,
            at(11),
        );
        let first = series.points[0].latency_ms.unwrap();
        assert!(first.p99 <= 2.5, "all 100 were 2 ms: {first:?}");
        let second = series.points[1].latency_ms.unwrap();
        assert!(second.p50 <= 2.5, "{second:?}");
        assert!(second.p95 > 500.0 && second.p95 <= 1000.0, "10% were 800 ms: {second:?}");
        assert_eq!(series.points[2].latency_ms, None, "no request in the live interval");
        let total = series.total_latency_ms.unwrap();
        assert!(total.p95 <= 2.5 && total.p99 > 500.0, "5% of 200 were slow: {total:?}");
    }

    #[test]
    fn history_is_bounded_to_an_hour_and_dropped_with_the_service() {
        let history = MetricsHistory::new();
        let web = snapshot(vec![revision("web", "web-1", &[(200, 1)], &[1])]);
        for i in 0..(POINTS as u64 + 50) {
            history.sample(&web, at(i * 10));
        }
        let now = at((POINTS as u64 + 50) * 10);
        let series = history.series(&web, "demo", "us-central1", "web", WINDOW, now);
        assert_eq!(
            series.points.len(),
            POINTS,
            "an hour of stored points, the oldest one out of the window, plus the live one"
        );
        assert!(series.points.iter().all(|p| p.end_time > unix_seconds(now) - WINDOW.as_secs()));
        let ten_minutes = history.series(&web, "demo", "us-central1", "web", Duration::from_secs(600), now);
        assert_eq!(ten_minutes.points.len(), 60, "59 stored points and the live one");

        // The service is gone from the snapshot: its history goes with it.
        let empty = snapshot(Vec::new());
        history.sample(&empty, now);
        let series = history.series(&empty, "demo", "us-central1", "web", WINDOW, now);
        assert_eq!(series.points, Vec::new());
        assert_eq!(history.lock().services.len(), 0);
    }

    #[test]
    fn a_deleted_revision_never_counts_negative() {
        let history = MetricsHistory::new();
        history.sample(
            &snapshot(vec![revision("web", "web-1", &[(200, 50)], &[]), revision("web", "web-2", &[(200, 5)], &[])]),
            at(0),
        );
        let after = snapshot(vec![revision("web", "web-2", &[(200, 7)], &[])]);
        history.sample(&after, at(10));
        let series = history.series(&after, "demo", "us-central1", "web", WINDOW, at(10));
        assert_eq!(series.points[1].requests.c2xx, 2);
    }
}
