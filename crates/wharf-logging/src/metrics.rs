//! Wharf's metrics: Cloud Run's metric set per service and revision, plus Wharf's own, kept in
//! process ([`Metrics::snapshot`], for the server's own consumers such as a console) and
//! rendered in the Prometheus text exposition format ([`render`], served on `/metrics` of
//! `--metrics-addr`).
//!
//! Hand-written rather than through a metrics crate: the request path only bumps atomics in
//! a per-revision record found without allocating, the pool figures are read from the
//! pools when scraped (never duplicated into a second registry), and the same snapshot
//! serves both the exposition and in-process readers; the text format is a few dozen lines.
//!
//! Names follow Cloud Run's (`request_count`, `request_latencies`,
//! `container/instance_count`, ...) under the prefix `wharf_run_`, with Prometheus' unit and
//! `_total` suffixes; labels follow Cloud Run's resource labels (`project_id`, `location`,
//! `service_name`, `revision_name`) and metric labels (`response_code`,
//! `response_code_class`, `state`). Cardinality is bounded: `response_code` is one of the
//! codes 100-599 actually answered (other values count under `response_code="other"`), API
//! methods are the seven HTTP verbs or `other`, and a revision's series disappear when its
//! pool does (the revision was deleted).
//!
//! Container CPU and memory utilisation (Cloud Run's `container/cpu/utilizations` and
//! `container/memory/utilizations`, distributions over instances) are histograms per
//! revision, sampled from each instance's cgroup when the metrics are read
//! ([`UtilizationSampler`]): reading costs two or three small files per instance and nothing
//! runs between reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use wharf_router::observe::{Histogram, HistogramSnapshot};
use wharf_router::{PoolReport, RequestRecord};

/// Reads the pools' reports when metrics are read (the control plane's `pool_reports`).
pub type PoolSource = Box<dyn Fn() -> Vec<PoolReport> + Send + Sync>;

/// The metrics registry. One per server, shared by the ingress's observer, the API and
/// registry layers and the `/metrics` endpoint.
pub struct Metrics {
    /// Per revision name (unique within a project and location), the traffic records of
    /// every revision of that name; requests answered before a revision was picked are
    /// under the empty name.
    traffic: RwLock<HashMap<String, Vec<Arc<RevisionTraffic>>>>,
    /// Request log entries dropped because the log queue was full.
    pub(crate) request_log_dropped: Arc<AtomicU64>,
    api: SurfaceCounts,
    registry: SurfaceCounts,
    pools: OnceLock<PoolSource>,
    utilization: Mutex<UtilizationSampler>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Which labels one revision's series carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevisionLabels {
    pub project_id: String,
    pub location: String,
    pub service_name: String,
    /// Empty for requests answered before a revision was picked (refused, say).
    pub revision_name: String,
}

/// Codes 100..=599 are counted one by one.
const FIRST_CODE: u16 = 100;
const CODES: usize = 500;

#[derive(Debug)]
struct RevisionTraffic {
    labels: RevisionLabels,
    by_code: Box<[AtomicU64]>,
    other_code: AtomicU64,
    latency: Histogram,
    cold_starts: AtomicU64,
}

/// HTTP requests to one of the server's own surfaces (the admin API, the registry).
#[derive(Debug)]
struct SurfaceCounts {
    /// `[method][class]`: methods as in [`METHODS`] plus `other`, classes 1xx-5xx.
    counts: [[AtomicU64; 5]; 8],
}

const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"];

/// Which surface of the server a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Api,
    Registry,
}

/// A copy of the metrics at one moment: what `/metrics` renders and what in-process readers
/// (a console) chart.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub revisions: Vec<RevisionSnapshot>,
    /// `(surface, method, class, count)` for non-zero counts; class is `"2xx"` etc.
    pub surface_requests: Vec<(Surface, &'static str, &'static str, u64)>,
    pub request_log_dropped: u64,
}

#[derive(Debug, Clone)]
pub struct RevisionSnapshot {
    pub labels: RevisionLabels,
    /// Requests by status code (`None`: outside 100-599).
    pub requests_by_code: BTreeMap<Option<u16>, u64>,
    pub latency: HistogramSnapshot,
    /// Requests that waited for an instance to start.
    pub cold_start_requests: u64,
    /// The revision's pool now (instances, queue, autoscaler, startups, time); `None` for
    /// requests refused before a revision was picked.
    pub pool: Option<PoolReport>,
    /// Its instances' CPU and memory utilisation so far; `None` without a pool.
    pub utilization: Option<UtilizationSnapshot>,
}

/// Bucket bounds of the utilisation histograms, as fractions of the instance's limit.
pub const UTILIZATION_BOUNDS: &[f64] = &[0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// The shortest window an instance's CPU utilisation is measured over: metrics read sooner
/// after the last observation of an instance add none for it.
pub const UTILIZATION_WINDOW: Duration = Duration::from_secs(1);

/// One revision's utilisation histograms: one observation per instance per window.
#[derive(Debug, Clone)]
pub struct UtilizationSnapshot {
    /// CPU time used over the window divided by the window times the CPU limit.
    pub cpu: HistogramSnapshot,
    /// Memory working set at the end of the window divided by the memory limit.
    pub memory: HistogramSnapshot,
}

/// Turns the instances' cgroup counters into utilisation observations, per revision.
///
/// For each instance it keeps the last CPU reading; when metrics are read at least
/// [`UTILIZATION_WINDOW`] after it, the CPU used since, divided by the time since times the
/// CPU limit, is observed, with the memory in use over the memory limit beside it. An
/// instance's first window starts when it joined its pool (its CPU counter starts with the
/// container, so start-up CPU falls into that first window). Frozen instances (CPU throttled
/// between requests) use no CPU, and their windows say so.
#[derive(Debug, Default)]
struct UtilizationSampler {
    /// Per instance id, its last reading.
    readings: HashMap<String, CpuReading>,
    revisions: HashMap<RevisionLabels, RevisionUtilization>,
}

#[derive(Debug, Clone, Copy)]
struct CpuReading {
    cpu_usage_us: u64,
    at: Instant,
}

#[derive(Debug)]
struct RevisionUtilization {
    cpu: Histogram,
    memory: Histogram,
}

fn labels_of(pool: &PoolReport) -> RevisionLabels {
    RevisionLabels {
        project_id: pool.owner.project.clone(),
        location: pool.owner.location.clone(),
        service_name: pool.owner.service.clone(),
        revision_name: pool.revision.clone(),
    }
}

/// CPU used between two readings over the CPU the limit allowed in that time.
#[allow(clippy::cast_precision_loss)]
fn cpu_utilization(used_us: u64, window: Duration, cpu_millis: u64) -> Option<f64> {
    let allowed_us = window.as_secs_f64() * 1e6 * (cpu_millis as f64 / 1000.0);
    (allowed_us > 0.0).then(|| used_us as f64 / allowed_us)
}

impl UtilizationSampler {
    /// Observes every instance of `pools` whose window has run `UTILIZATION_WINDOW`, and
    /// forgets instances and revisions that are gone.
    fn sample(&mut self, pools: &[PoolReport], now: Instant) {
        let mut present = HashSet::new();
        for pool in pools {
            let histograms = self.revisions.entry(labels_of(pool)).or_insert_with(|| RevisionUtilization {
                cpu: Histogram::new(UTILIZATION_BOUNDS),
                memory: Histogram::new(UTILIZATION_BOUNDS),
            });
            for instance in &pool.instances {
                present.insert(instance.id.as_str());
                let Some(usage) = instance.usage else { continue };
                let previous = self
                    .readings
                    .get(&instance.id)
                    .copied()
                    .unwrap_or(CpuReading { cpu_usage_us: 0, at: instance.joined });
                let window = now.saturating_duration_since(previous.at);
                if window < UTILIZATION_WINDOW {
                    continue;
                }
                let used = usage.cpu_usage_us.saturating_sub(previous.cpu_usage_us);
                if let Some(cpu) = cpu_utilization(used, window, pool.owner.cpu_millis) {
                    histograms.cpu.observe_value(cpu);
                }
                if pool.owner.memory_bytes > 0 {
                    #[allow(clippy::cast_precision_loss)]
                    histograms.memory.observe_value(usage.memory_bytes as f64 / pool.owner.memory_bytes as f64);
                }
                self.readings.insert(instance.id.clone(), CpuReading { cpu_usage_us: usage.cpu_usage_us, at: now });
            }
        }
        self.readings.retain(|id, _| present.contains(id.as_str()));
        let live: HashSet<RevisionLabels> = pools.iter().map(labels_of).collect();
        self.revisions.retain(|labels, _| live.contains(labels));
    }

    fn snapshot(&self, labels: &RevisionLabels) -> Option<UtilizationSnapshot> {
        let r = self.revisions.get(labels)?;
        Some(UtilizationSnapshot { cpu: r.cpu.snapshot(), memory: r.memory.snapshot() })
    }
}

impl RevisionSnapshot {
    /// Requests answered with a code of `class` (1-5).
    pub fn requests_in_class(&self, class: u16) -> u64 {
        self.requests_by_code.iter().filter(|(code, _)| code.is_some_and(|c| c / 100 == class)).map(|(_, n)| n).sum()
    }

    pub fn requests(&self) -> u64 {
        self.requests_by_code.values().sum()
    }
}

/// `"2xx"` for 200.
pub fn code_class(code: u16) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            traffic: RwLock::default(),
            request_log_dropped: Arc::default(),
            api: SurfaceCounts::new(),
            registry: SurfaceCounts::new(),
            pools: OnceLock::new(),
            utilization: Mutex::default(),
        }
    }

    /// Where pool figures come from; set once, when the control plane is open.
    pub fn set_pool_source(&self, source: PoolSource) {
        let _ = self.pools.set(source);
    }

    /// Counts one proxied request (called by [`crate::requests::RequestTelemetry`]).
    pub fn record_request(&self, record: &RequestRecord) {
        let traffic = self.traffic_of(record);
        match record.status.checked_sub(FIRST_CODE).map(usize::from).filter(|i| *i < CODES) {
            Some(i) => traffic.by_code[i].fetch_add(1, Ordering::Relaxed),
            None => traffic.other_code.fetch_add(1, Ordering::Relaxed),
        };
        traffic.latency.observe(record.latency);
        if record.cold_start {
            traffic.cold_starts.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn traffic_of(&self, record: &RequestRecord) -> Arc<RevisionTraffic> {
        let owner = &record.owner;
        let same = |t: &&Arc<RevisionTraffic>| {
            t.labels.service_name == record.service
                && t.labels.project_id == owner.project
                && t.labels.location == owner.location
        };
        if let Some(found) = self
            .traffic
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.revision)
            .and_then(|v| v.iter().find(same))
        {
            return found.clone();
        }
        let mut map = self.traffic.write().unwrap_or_else(|p| p.into_inner());
        let entries = map.entry(record.revision.clone()).or_default();
        if let Some(found) = entries.iter().find(same) {
            return found.clone();
        }
        let traffic = Arc::new(RevisionTraffic {
            labels: RevisionLabels {
                project_id: owner.project.clone(),
                location: owner.location.clone(),
                service_name: record.service.clone(),
                revision_name: record.revision.clone(),
            },
            by_code: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
            other_code: AtomicU64::new(0),
            latency: Histogram::default(),
            cold_starts: AtomicU64::new(0),
        });
        entries.push(traffic.clone());
        traffic
    }

    /// Counts one request to the admin API or the registry.
    pub fn record_surface(&self, surface: Surface, method: &str, status: u16) {
        let counts = match surface {
            Surface::Api => &self.api,
            Surface::Registry => &self.registry,
        };
        let m = METHODS[..7].iter().position(|known| *known == method).unwrap_or(7);
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        counts.counts[m][class].fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics now. Also forgets the traffic of revisions whose pool is gone (deleted),
    /// so their series end.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let pools = self.pools.get().map(|source| source()).unwrap_or_default();
        let mut utilization = self.utilization.lock().unwrap_or_else(|p| p.into_inner());
        utilization.sample(&pools, Instant::now());
        let pool_of = |labels: &RevisionLabels| {
            pools.iter().find(|p| {
                p.revision == labels.revision_name
                    && p.owner.project == labels.project_id
                    && p.owner.location == labels.location
            })
        };
        let service_exists = |labels: &RevisionLabels| {
            pools.iter().any(|p| {
                p.owner.service == labels.service_name
                    && p.owner.project == labels.project_id
                    && p.owner.location == labels.location
            })
        };
        let mut revisions = Vec::new();
        if self.pools.get().is_some() {
            let mut map = self.traffic.write().unwrap_or_else(|p| p.into_inner());
            for entries in map.values_mut() {
                entries.retain(|t| {
                    if t.labels.revision_name.is_empty() {
                        service_exists(&t.labels)
                    } else {
                        pool_of(&t.labels).is_some()
                    }
                });
            }
            map.retain(|_, entries| !entries.is_empty());
        }
        let map = self.traffic.read().unwrap_or_else(|p| p.into_inner());
        for traffic in map.values().flatten() {
            let mut requests_by_code = BTreeMap::new();
            for (i, count) in traffic.by_code.iter().enumerate() {
                let n = count.load(Ordering::Relaxed);
                if n > 0 {
                    requests_by_code.insert(Some(FIRST_CODE + u16::try_from(i).unwrap_or(0)), n);
                }
            }
            let other = traffic.other_code.load(Ordering::Relaxed);
            if other > 0 {
                requests_by_code.insert(None, other);
            }
            revisions.push(RevisionSnapshot {
                labels: traffic.labels.clone(),
                requests_by_code,
                latency: traffic.latency.snapshot(),
                cold_start_requests: traffic.cold_starts.load(Ordering::Relaxed),
                pool: pool_of(&traffic.labels).cloned(),
                utilization: utilization.snapshot(&traffic.labels),
            });
        }
        drop(map);
        // Revisions that have served nothing yet still show their instances.
        for pool in &pools {
            let labels = RevisionLabels {
                project_id: pool.owner.project.clone(),
                location: pool.owner.location.clone(),
                service_name: pool.owner.service.clone(),
                revision_name: pool.revision.clone(),
            };
            if !revisions.iter().any(|r| r.labels == labels) {
                revisions.push(RevisionSnapshot {
                    utilization: utilization.snapshot(&labels),
                    labels,
                    requests_by_code: BTreeMap::new(),
                    latency: Histogram::default().snapshot(),
                    cold_start_requests: 0,
                    pool: Some(pool.clone()),
                });
            }
        }
        drop(utilization);
        revisions.sort_by(|a, b| a.labels.cmp(&b.labels));
        let mut surface_requests = Vec::new();
        for (surface, counts) in [(Surface::Api, &self.api), (Surface::Registry, &self.registry)] {
            for (m, row) in counts.counts.iter().enumerate() {
                for (c, count) in row.iter().enumerate() {
                    let n = count.load(Ordering::Relaxed);
                    if n > 0 {
                        surface_requests.push((surface, METHODS[m], ["1xx", "2xx", "3xx", "4xx", "5xx"][c], n));
                    }
                }
            }
        }
        MetricsSnapshot {
            revisions,
            surface_requests,
            request_log_dropped: self.request_log_dropped.load(Ordering::Relaxed),
        }
    }
}

impl SurfaceCounts {
    fn new() -> SurfaceCounts {
        SurfaceCounts { counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))) }
    }
}

/// The text exposition format (version 0.0.4) of a snapshot.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = Exposition::default();
    let revisions = &snapshot.revisions;
    out.family(
        "wharf_run_request_count_total",
        "counter",
        "Requests served, by response code (Cloud Run: request_count).",
    );
    for r in revisions {
        for (code, n) in &r.requests_by_code {
            let (code, class) = match code {
                Some(c) => (c.to_string(), code_class(*c)),
                None => ("other".to_owned(), "5xx"),
            };
            out.sample(
                "wharf_run_request_count_total",
                &r.labels,
                &[("response_code", &code), ("response_code_class", class)],
                *n,
            );
        }
    }
    out.family(
        "wharf_run_request_latencies_seconds",
        "histogram",
        "Time from a request's head to the end of its response (Cloud Run: request_latencies).",
    );
    for r in revisions.iter().filter(|r| r.latency.count > 0) {
        out.histogram("wharf_run_request_latencies_seconds", &r.labels, &r.latency);
    }
    out.family("wharf_run_cold_start_requests_total", "counter", "Requests that waited for an instance to start.");
    for r in revisions.iter().filter(|r| r.requests() > 0) {
        out.sample("wharf_run_cold_start_requests_total", &r.labels, &[], r.cold_start_requests);
    }
    let pools: Vec<(&RevisionLabels, &PoolReport)> =
        revisions.iter().filter_map(|r| r.pool.as_ref().map(|p| (&r.labels, p))).collect();
    out.family("wharf_run_container_instances", "gauge", "Instances by state: active (serving a request) or idle (Cloud Run: container/instance_count; renamed, Prometheus reserves _count for histograms).");
    for (labels, p) in &pools {
        out.sample("wharf_run_container_instances", labels, &[("state", "active")], p.active);
        out.sample("wharf_run_container_instances", labels, &[("state", "idle")], p.idle);
    }
    out.family("wharf_run_container_billable_instance_time_seconds_total", "counter", "Instance time Cloud Run would bill: cpu_allocation=request (CPU throttled outside requests: time with a request in flight) or always (whole instance lifetime) (Cloud Run: container/billable_instance_time).");
    for (labels, p) in &pools {
        out.sample(
            "wharf_run_container_billable_instance_time_seconds_total",
            labels,
            &[("cpu_allocation", "request")],
            Seconds(p.busy_time.as_secs_f64()),
        );
        out.sample(
            "wharf_run_container_billable_instance_time_seconds_total",
            labels,
            &[("cpu_allocation", "always")],
            Seconds(p.instance_time.as_secs_f64()),
        );
    }
    out.family(
        "wharf_run_container_startup_latencies_seconds",
        "histogram",
        "Time for a new instance to become ready (Cloud Run: container/startup_latencies).",
    );
    for (labels, p) in &pools {
        out.histogram("wharf_run_container_startup_latencies_seconds", labels, &p.startups);
    }
    out.family(
        "wharf_run_container_cpu_utilizations",
        "histogram",
        "Instances' CPU use over windows of at least 1 s, as a fraction of their CPU limit, read from their cgroups (Cloud Run: container/cpu/utilizations).",
    );
    for r in revisions {
        if let Some(u) = &r.utilization {
            out.histogram("wharf_run_container_cpu_utilizations", &r.labels, &u.cpu);
        }
    }
    out.family(
        "wharf_run_container_memory_utilizations",
        "histogram",
        "Instances' memory in use (without reclaimable page cache) as a fraction of their memory limit, read from their cgroups with each CPU window (Cloud Run: container/memory/utilizations).",
    );
    for r in revisions {
        if let Some(u) = &r.utilization {
            out.histogram("wharf_run_container_memory_utilizations", &r.labels, &u.memory);
        }
    }
    out.family("wharf_run_container_max_request_concurrencies", "gauge", "The most requests in flight on one instance over the last one to two minutes (Cloud Run: container/max_request_concurrencies).");
    for (labels, p) in &pools {
        out.sample("wharf_run_container_max_request_concurrencies", labels, &[], p.max_concurrency);
    }
    out.family("wharf_run_pending_requests", "gauge", "Requests queued for an instance.");
    for (labels, p) in &pools {
        out.sample("wharf_run_pending_requests", labels, &[], p.queued);
    }
    out.family("wharf_run_autoscaler_desired_instances", "gauge", "Instances the autoscaler last asked for.");
    for (labels, p) in &pools {
        out.sample("wharf_run_autoscaler_desired_instances", labels, &[], p.desired);
    }
    out.family("wharf_run_autoscaler_actual_instances", "gauge", "Instances running or starting.");
    for (labels, p) in &pools {
        out.sample("wharf_run_autoscaler_actual_instances", labels, &[], p.active + p.idle + p.starting);
    }
    out.family(
        "wharf_server_request_count_total",
        "counter",
        "Requests to the server's own surfaces: the admin API and the registry.",
    );
    for (surface, method, class, n) in &snapshot.surface_requests {
        let surface = match surface {
            Surface::Api => "api",
            Surface::Registry => "registry",
        };
        out.plain_sample(
            "wharf_server_request_count_total",
            &[("surface", surface), ("method", method), ("response_code_class", class)],
            *n,
        );
    }
    out.family(
        "wharf_request_log_dropped_total",
        "counter",
        "Request log entries dropped because the log queue was full.",
    );
    out.plain_sample("wharf_request_log_dropped_total", &[], snapshot.request_log_dropped);
    out.text
}

/// A sample value: integers print as such, seconds with their fraction.
struct Seconds(f64);

trait SampleValue {
    fn write(&self, out: &mut String);
}

impl SampleValue for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for u32 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for Seconds {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{:.6}", self.0);
    }
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn labels(&mut self, revision: Option<&RevisionLabels>, extra: &[(&str, &str)]) {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(r) = revision {
            pairs.extend([
                ("project_id", r.project_id.as_str()),
                ("location", r.location.as_str()),
                ("service_name", r.service_name.as_str()),
                ("revision_name", r.revision_name.as_str()),
            ]);
        }
        pairs.extend_from_slice(extra);
        if pairs.is_empty() {
            return;
        }
        self.text.push('{');
        for (i, (name, value)) in pairs.iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = write!(self.text, "{name}=\"{escaped}\"");
        }
        self.text.push('}');
    }

    fn sample(&mut self, name: &str, revision: &RevisionLabels, extra: &[(&str, &str)], value: impl SampleValue) {
        self.text.push_str(name);
        self.labels(Some(revision), extra);
        self.text.push(' ');
        value.write(&mut self.text);
        self.text.push('\n');
    }

    fn plain_sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        self.labels(None, labels);
        let _ = writeln!(self.text, " {value}");
    }

    fn histogram(&mut self, name: &str, revision: &RevisionLabels, h: &HistogramSnapshot) {
        let base = name.to_owned();
        for (bound, count) in h.bounds.iter().zip(&h.cumulative) {
            let le = bound.to_string();
            self.sample(&format!("{base}_bucket"), revision, &[("le", &le)], *count);
        }
        self.sample(&format!("{base}_bucket"), revision, &[("le", "+Inf")], h.count);
        self.sample(&format!("{base}_sum"), revision, &[], Seconds(h.sum_seconds));
        self.sample(&format!("{base}_count"), revision, &[], h.count);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use wharf_router::PoolOwner;

    use super::*;

    fn record(revision: &str, status: u16) -> RequestRecord {
        RequestRecord {
            received: SystemTime::now(),
            owner: Arc::new(PoolOwner {
                project: "p".into(),
                location: "l".into(),
                service: "api".into(),
                ..Default::default()
            }),
            service: "api".into(),
            revision: revision.into(),
            instance: "i".into(),
            method: "GET".into(),
            url: "http://x/".into(),
            status,
            latency: Duration::from_millis(3),
            request_size: 0,
            response_size: 0,
            user_agent: None,
            referer: None,
            remote_ip: "127.0.0.1".parse().unwrap(),
            protocol: "HTTP/1.1",
            trace: None,
            queued: Duration::ZERO,
            cold_start: status == 201,
        }
    }

    #[test]
    fn requests_are_counted_by_code_and_class_and_rendered_with_cloud_runs_labels() {
        let metrics = Metrics::new();
        for status in [200, 200, 201, 404, 500, 503, 999] {
            metrics.record_request(&record("api-00001", status));
        }
        metrics.record_request(&record("api-00002", 200));
        metrics.record_surface(Surface::Api, "POST", 200);
        metrics.record_surface(Surface::Registry, "BREW", 418);
        let snapshot = metrics.snapshot();
        let first = &snapshot.revisions[0];
        assert_eq!(first.labels.revision_name, "api-00001");
        assert_eq!((first.requests_in_class(2), first.requests_in_class(4), first.requests_in_class(5)), (3, 1, 2));
        assert_eq!((first.requests(), first.cold_start_requests, first.latency.count), (7, 1, 7));
        let text = render(&snapshot);
        assert!(text.contains(r#"wharf_run_request_count_total{project_id="p",location="l",service_name="api",revision_name="api-00001",response_code="200",response_code_class="2xx"} 2"#), "{text}");
        assert!(text.contains(r#"response_code="other",response_code_class="5xx"} 1"#));
        assert!(text.contains(r#"wharf_run_request_latencies_seconds_bucket{project_id="p",location="l",service_name="api",revision_name="api-00001",le="0.0025"} 0"#));
        assert!(text.contains(r#"le="+Inf"} 7"#));
        assert!(text.contains(
            r#"wharf_server_request_count_total{surface="registry",method="other",response_code_class="4xx"} 1"#
        ));
        assert!(text.ends_with("wharf_request_log_dropped_total 0\n"));
    }

    #[test]
    fn a_deleted_revisions_series_are_dropped_at_the_next_snapshot() {
        let metrics = Metrics::new();
        metrics.record_request(&record("api-00001", 200));
        metrics.record_request(&record("api-00002", 200));
        metrics.set_pool_source(Box::new(Vec::new));
        // No pool left for either revision: both were deleted.
        assert_eq!(metrics.snapshot().revisions.len(), 0);
        assert!(!render(&metrics.snapshot()).contains("api-0000"));
    }

    fn pool_with(instances: Vec<wharf_router::InstanceSample>) -> PoolReport {
        PoolReport {
            owner: Arc::new(PoolOwner {
                project: "p".into(),
                location: "l".into(),
                service: "api".into(),
                cpu_millis: 1000,
                memory_bytes: 512 << 20,
            }),
            revision: "api-00001".into(),
            active: 0,
            idle: 1,
            starting: 0,
            in_flight: 0,
            queued: 0,
            desired: 1,
            max_concurrency: 0,
            startups: Histogram::default().snapshot(),
            instance_time: Duration::ZERO,
            busy_time: Duration::ZERO,
            requests: 0,
            instances,
        }
    }

    #[test]
    fn utilisation_is_cpu_over_each_window_and_memory_over_the_limit() {
        let joined = Instant::now();
        let instance = |cpu_usage_us, memory_bytes| wharf_router::InstanceSample {
            id: "i1".into(),
            joined,
            usage: Some(wharf_router::ResourceUsage { cpu_usage_us, memory_bytes }),
        };
        let labels = labels_of(&pool_with(Vec::new()));
        let mut sampler = UtilizationSampler::default();
        // 0.5 s of CPU in the 2 s since it joined, on 1 vCPU; 128 of 512 MiB.
        sampler.sample(&[pool_with(vec![instance(500_000, 128 << 20)])], joined + Duration::from_secs(2));
        // Less than a window since: no observation, and the reading is not taken.
        sampler.sample(&[pool_with(vec![instance(900_000, 128 << 20)])], joined + Duration::from_millis(2500));
        // 2 s later with no CPU used since the last reading (frozen); 256 of 512 MiB.
        sampler.sample(&[pool_with(vec![instance(500_000, 256 << 20)])], joined + Duration::from_secs(4));
        let u = sampler.snapshot(&labels).unwrap();
        assert_eq!((u.cpu.count, u.memory.count), (2, 2));
        assert!((u.cpu.sum_seconds - 0.25).abs() < 1e-9, "{:?}", u.cpu);
        assert!((u.memory.sum_seconds - 0.75).abs() < 1e-9, "{:?}", u.memory);
        let le = |h: &HistogramSnapshot, bound: f64| h.cumulative[h.bounds.iter().position(|b| *b == bound).unwrap()];
        assert_eq!((le(&u.cpu, 0.01), le(&u.cpu, 0.2), le(&u.cpu, 0.3)), (1, 1, 2), "{:?}", u.cpu);
        assert_eq!((le(&u.memory, 0.2), le(&u.memory, 0.3), le(&u.memory, 0.5)), (0, 1, 2), "{:?}", u.memory);
        // The instance left: its reading is forgotten; the revision was deleted: its series too.
        sampler.sample(&[pool_with(Vec::new())], joined + Duration::from_secs(6));
        assert!(sampler.readings.is_empty());
        sampler.sample(&[], joined + Duration::from_secs(8));
        assert!(sampler.snapshot(&labels).is_none());
    }

    #[test]
    fn utilisation_histograms_are_rendered_per_revision() {
        let metrics = Metrics::new();
        let joined = Instant::now() - Duration::from_secs(2);
        let usage = wharf_router::ResourceUsage { cpu_usage_us: 1_000_000, memory_bytes: 64 << 20 };
        let pool = pool_with(vec![wharf_router::InstanceSample { id: "i1".into(), joined, usage: Some(usage) }]);
        metrics.set_pool_source(Box::new(move || vec![pool.clone()]));
        let text = render(&metrics.snapshot());
        let labels = r#"{project_id="p",location="l",service_name="api",revision_name="api-00001""#;
        assert!(text.contains(&format!("wharf_run_container_cpu_utilizations_count{labels}}} 1")), "{text}");
        assert!(text.contains(&format!("wharf_run_container_memory_utilizations_sum{labels}}} 0.125000")), "{text}");
        assert!(text.contains(&format!(r#"wharf_run_container_memory_utilizations_bucket{labels},le="0.1"}} 0"#)));
        assert!(text.contains(&format!(r#"wharf_run_container_memory_utilizations_bucket{labels},le="0.2"}} 1"#)));
    }

    #[test]
    fn the_grafana_dashboard_charts_only_metrics_the_server_exports() {
        let dashboard = include_str!("../../../docs/grafana-dashboard.json");
        let exposition = render(&Metrics::new().snapshot());
        let families: Vec<&str> =
            exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        let used = regex::Regex::new(r"wharf_[a-z_]+").unwrap();
        let mut names: Vec<&str> = used.find_iter(dashboard).map(|m| m.as_str()).collect();
        names.dedup();
        assert!(names.len() >= 10, "{names:?}");
        for name in names {
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(families.contains(&family), "the dashboard charts {name}, which /metrics does not export");
        }
    }
}
