//! What the data plane reports about the traffic it carries, through a seam the router owns
//! (like [`crate::Upstream`]): one [`RequestRecord`] per proxied request, handed to a
//! [`RequestObserver`] when the response ends (its last body byte sent, or the client gone),
//! and the fixed-bucket [`Histogram`] the pools keep their instances' startup latencies in.
//!
//! The router does not store, count or export anything itself: the server's observer
//! (`wharf_logging::requests`) turns records into request log entries and metrics. An
//! observer is called on the ingress worker threads, so it must not block (no I/O, no
//! contended lock): hand the record to a bounded channel and count what does not fit.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Who a revision's pool serves, for labelling what it reports: the service's project,
/// location and name, and the size of its instances (for usage metering). Set once when the
/// control plane creates the pool; the router's own tests leave it empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolOwner {
    pub project: String,
    pub location: String,
    pub service: String,
    /// The CPU limit of each instance, in thousandths of a vCPU.
    pub cpu_millis: u64,
    /// The memory limit of each instance.
    pub memory_bytes: u64,
}

/// One proxied request, as a request log entry and the request metrics need it. Requests
/// for hosts no service answers to are not recorded (they belong to no service).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// When the request's head arrived.
    pub received: SystemTime,
    pub owner: Arc<PoolOwner>,
    /// The service the host routed to (also when no revision could be picked).
    pub service: String,
    /// Empty when the request was answered before a revision was picked (refused, say).
    pub revision: String,
    /// Empty when the request never reached an instance.
    pub instance: String,
    pub method: String,
    /// The URL as the client asked for it: scheme, host and path with query.
    pub url: String,
    pub status: u16,
    /// From the request head to the end of the response.
    pub latency: Duration,
    /// The request's body size as its `Content-Length` says (0 without one).
    pub request_size: u64,
    /// Response body bytes sent to the client.
    pub response_size: u64,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub remote_ip: IpAddr,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'static str,
    /// The trace id (32 hex digits) of the request's `traceparent` or
    /// `X-Cloud-Trace-Context`, or the one the proxy gave it.
    pub trace: Option<String>,
    /// How long the request waited for an instance (0 when one had room at once).
    pub queued: Duration,
    /// The request waited for an instance that was started while it waited (a cold start).
    pub cold_start: bool,
}

/// Receives a record of every proxied request. Must not block (see the module doc).
pub trait RequestObserver: Send + Sync + fmt::Debug + 'static {
    fn observe(&self, record: RequestRecord);
}

/// A Prometheus-style histogram with fixed bucket bounds, updated with atomics only (no lock
/// on the request path). Sums are kept in microseconds (as integers, so they add exactly).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound (observations `<=` it and above the previous one), plus one for
    /// `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

/// Bucket bounds, in seconds, for latencies from a millisecond to five minutes.
pub const LATENCY_BOUNDS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A point-in-time copy of a [`Histogram`]: cumulative counts per bound (Prometheus'
/// `le` buckets), the total count and the sum in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// `cumulative[i]` observations were `<= bounds[i]`.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let i = self.bounds.iter().position(|b| seconds <= *b).unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(value.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Observes a plain number (a ratio, say): the sum keeps it to a millionth.
    pub fn observe_value(&self, value: f64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let millionths = (value.max(0.0) * 1e6).round() as u64;
        self.sum_micros.fetch_add(millionths, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        for bucket in &self.buckets[..self.bounds.len()] {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let count = running + self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        // Microseconds to seconds: exact enough for any sum a server reaches.
        #[allow(clippy::cast_precision_loss)]
        let sum_seconds = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        HistogramSnapshot { bounds: self.bounds, cumulative, count, sum_seconds }
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new(LATENCY_BOUNDS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_exactly() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        for ms in [1, 10, 11, 100, 999, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, [2, 4, 5], "10 ms is in the 0.01 bucket (<=), 5 s only in +Inf");
        assert_eq!(s.count, 6);
        assert!((s.sum_seconds - 6.121).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
