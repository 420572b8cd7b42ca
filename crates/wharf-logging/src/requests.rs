//! Request logs and request metrics: the server's [`RequestObserver`]. Every request the
//! ingress routes to a service becomes, as in Cloud Run,
//!
//! - one entry of `projects/P/logs/run.googleapis.com%2Frequests` with `httpRequest`
//!   (Cloud Logging's field names: `requestMethod`, `requestUrl`, `status`, `latency` as
//!   `"0.012345s"`, `requestSize`, `responseSize`, `userAgent`, `remoteIp`, `referer`,
//!   `protocol`), `trace` (`projects/P/traces/ID`, from `traceparent` or
//!   `X-Cloud-Trace-Context`), a severity from the status class (5xx ERROR, 4xx WARNING,
//!   else INFO), and labels `instanceId` plus Wharf's own [`COLD_START_LABEL`] (`"true"` when
//!   the request waited for an instance to start) and [`QUEUE_LATENCY_LABEL`] (how long it
//!   waited for an instance, when it did);
//! - counts and a latency observation in the [`Metrics`] registry.
//!
//! The hot path does no I/O: [`RequestTelemetry::observe`] updates atomics and offers the
//! record to a bounded queue ([`QUEUE_CAPACITY`]); when the queue is full the entry is
//! dropped and counted (`wharf_request_log_dropped_total`), the metrics still count it. One
//! task turns the records into entries and hands them to a bounded queue of the log store's
//! writer (which stores them in group commits), waiting while that is full, so a slow disk
//! fills the queue rather than memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use wharf_router::{RequestObserver, RequestRecord};
use wharf_runtime::logs::{LogEntry, LogStore, Stream};

use crate::metrics::Metrics;

/// Request records waiting to be stored, at most.
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// Records taken from the queue at once, and entries the log store's queue holds.
const BATCH: usize = 1024;

/// `labels."wharf.dev/cold_start"`: `"true"` on a request that waited for an instance start.
pub const COLD_START_LABEL: &str = "wharf.dev/cold_start";
/// `labels."wharf.dev/queue_latency"`: how long the request waited for an instance (Cloud
/// Logging's duration format, `"0.812000s"`), on requests that waited at all.
pub const QUEUE_LATENCY_LABEL: &str = "wharf.dev/queue_latency";

/// The ingress's observer: request metrics at once, request log entries through the queue.
#[derive(Debug)]
pub struct RequestTelemetry {
    metrics: Arc<Metrics>,
    queue: mpsc::Sender<RequestRecord>,
    dropped: Arc<AtomicU64>,
}

impl RequestTelemetry {
    /// Starts the task that stores request log entries in `logs`. Must be called within a
    /// tokio runtime; the task ends when the telemetry is dropped (after storing what it
    /// holds).
    pub fn start(logs: LogStore, metrics: Arc<Metrics>) -> Arc<RequestTelemetry> {
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(store_entries(logs, rx));
        let dropped = metrics.request_log_dropped.clone();
        Arc::new(RequestTelemetry { metrics, queue, dropped })
    }
}

impl RequestObserver for RequestTelemetry {
    fn observe(&self, record: RequestRecord) {
        self.metrics.record_request(&record);
        if self.queue.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn store_entries(logs: LogStore, mut rx: mpsc::Receiver<RequestRecord>) {
    let store = logs.queue(BATCH);
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        for record in batch.drain(..) {
            // Back-pressure: waits while the store's queue is full.
            if store.send(Box::new(entry(&record))).await.is_err() {
                return;
            }
        }
    }
}

/// Cloud Logging's severity for an HTTP status.
pub fn severity(status: u16) -> &'static str {
    match status {
        500.. => "ERROR",
        400..=499 => "WARNING",
        _ => "INFO",
    }
}

/// A duration as Cloud Logging writes it: seconds with a fraction and an `s`.
pub fn duration_text(d: Duration) -> String {
    format!("{}.{:06}s", d.as_secs(), d.subsec_micros())
}

/// The stored form of a request log entry: its `httpRequest`, trace and labels in the
/// payload (lifted out again by [`crate::entry::render`]), a one-line summary as message.
pub fn entry(record: &RequestRecord) -> LogEntry {
    let mut http = json!({
        "requestMethod": record.method,
        "requestUrl": record.url,
        "status": record.status,
        "latency": duration_text(record.latency),
        "requestSize": record.request_size.to_string(),
        "responseSize": record.response_size.to_string(),
        "remoteIp": record.remote_ip.to_string(),
        "protocol": record.protocol,
    });
    if let Some(agent) = &record.user_agent {
        http["userAgent"] = Value::String(agent.clone());
    }
    if let Some(referer) = &record.referer {
        http["referer"] = Value::String(referer.clone());
    }
    let mut labels = serde_json::Map::new();
    if record.cold_start {
        labels.insert(COLD_START_LABEL.into(), Value::String("true".into()));
    }
    if !record.queued.is_zero() {
        labels.insert(QUEUE_LATENCY_LABEL.into(), Value::String(duration_text(record.queued)));
    }
    let mut payload = json!({ "httpRequest": http, "logging.googleapis.com/labels": labels });
    if let Some(trace) = &record.trace {
        payload["logging.googleapis.com/trace"] =
            Value::String(format!("projects/{}/traces/{trace}", record.owner.project));
    }
    // Stamped with the request's arrival, as Cloud Run does (`latency` still runs to the
    // response's end). The entry is stored when the response ended, so in the store's order
    // (ids) it comes after the lines its instance logged while serving it.
    let timestamp_us =
        record.received.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    LogEntry {
        id: 0,
        project: Some(record.owner.project.clone()),
        timestamp_us,
        stream: Stream::Requests,
        severity: severity(record.status).to_owned(),
        message: format!("{} {} {}", record.method, record.status, record.url),
        payload: Some(payload),
        instance: record.instance.clone(),
        service: Some(record.service.clone()),
        revision: Some(record.revision.clone()),
        job: None,
        execution: None,
        task_index: None,
        task_attempt: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Origin, render};
    use crate::filter::Filter;

    fn record(status: u16, cold: bool) -> RequestRecord {
        RequestRecord {
            received: UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456),
            owner: Arc::new(wharf_router::PoolOwner { project: "p".into(), ..Default::default() }),
            service: "api".into(),
            revision: "api-00001-abc".into(),
            instance: "i-1".into(),
            method: "GET".into(),
            url: "http://api.example.com/items?x=1".into(),
            status,
            latency: Duration::from_micros(12_345),
            request_size: 0,
            response_size: 512,
            user_agent: Some("curl/8".into()),
            referer: None,
            remote_ip: "127.0.0.1".parse().unwrap(),
            protocol: "HTTP/1.1",
            trace: Some("0123456789abcdef0123456789abcdef".into()),
            queued: if cold { Duration::from_millis(812) } else { Duration::ZERO },
            cold_start: cold,
        }
    }

    #[test]
    fn a_request_renders_as_cloud_runs_request_log_entry_and_answers_its_filters() {
        let origin = Origin { project: "p".into(), ..Origin::default() };
        let mut stored = entry(&record(503, true));
        stored.id = 7;
        let e = render(&stored, &origin);
        assert_eq!(e["logName"], "projects/p/logs/run.googleapis.com%2Frequests");
        assert_eq!(e["severity"], "ERROR");
        assert_eq!(e["resource"]["labels"]["revision_name"], "api-00001-abc");
        assert_eq!(
            e["httpRequest"],
            json!({"requestMethod": "GET", "requestUrl": "http://api.example.com/items?x=1", "status": 503,
                   "latency": "0.012345s", "requestSize": "0", "responseSize": "512", "remoteIp": "127.0.0.1",
                   "protocol": "HTTP/1.1", "userAgent": "curl/8"})
        );
        assert_eq!(e["trace"], "projects/p/traces/0123456789abcdef0123456789abcdef");
        assert_eq!(stored.project.as_deref(), Some("p"));
        assert_eq!(e["resource"]["labels"]["project_id"], "p");
        // Stamped with the arrival, as Cloud Run does; the latency runs to the response's end.
        assert_eq!(e["timestamp"], "2025-11-24T16:00:00.123456Z");
        assert_eq!(
            e["labels"],
            json!({"instanceId": "i-1", COLD_START_LABEL: "true", QUEUE_LATENCY_LABEL: "0.812000s"})
        );
        assert!(e.get("jsonPayload").is_none() && e.get("textPayload").is_none(), "{e}");
        for filter in [
            "httpRequest.status>=500",
            r#"logName="projects/p/logs/run.googleapis.com%2Frequests""#,
            "severity>=ERROR",
            r#"labels."wharf.dev/cold_start"="true""#,
            "httpRequest.requestMethod=GET httpRequest.requestUrl:\"/items\"",
        ] {
            assert!(Filter::parse(filter).unwrap().matches(&e), "{filter} should match");
        }
        assert!(!Filter::parse("httpRequest.status<500").unwrap().matches(&e));
        let warm = render(&entry(&record(404, false)), &origin);
        assert_eq!((warm["severity"].as_str(), warm["labels"].get(COLD_START_LABEL)), (Some("WARNING"), None));
        assert_eq!(render(&entry(&record(204, false)), &origin)["severity"], "INFO");
    }
}
