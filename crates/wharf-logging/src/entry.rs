//! Wharf's stored log lines in Logging v2's `LogEntry` shape, as Cloud Run writes them:
//! `resource` `cloud_run_revision` (service, revision, configuration, location, project) or
//! `cloud_run_job` (job, location, project), `logName` per stream, `textPayload` or
//! `jsonPayload`, `severity`, `timestamp`, `insertId`, and `labels` with the instance and, for
//! jobs, `run.googleapis.com/execution_name`, `task_index` and `task_attempt`.
//!
//! As Cloud Logging does with structured lines, the special fields of a JSON line are lifted
//! out of `jsonPayload`: `httpRequest`, `logging.googleapis.com/labels` (merged into
//! `labels`), `logging.googleapis.com/trace` and `spanId` (`trace`, `spanId`). Request log
//! entries (stream `requests`, `logName` `run.googleapis.com%2Frequests`) are stored that way
//! too ([`crate::requests`]) and render with `httpRequest`, `trace` and labels only.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use wharf_runtime::logs::{LogEntry, Stream};

/// Where the entries come from: the project they are read for (entries stored before
/// projects were recorded are reported under it), and the location of each of its services
/// and jobs (`("service" | "job", name) -> location`; a line of a
/// deleted service has no location label).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub project: String,
    pub locations: HashMap<(&'static str, String), String>,
}

impl Origin {
    fn location(&self, kind: &'static str, name: &str) -> Value {
        self.locations.get(&(kind, name.to_owned())).map_or(Value::Null, |l| Value::String(l.clone()))
    }
}

/// The `logName` of a stream, URL-encoded as Logging writes it.
pub fn log_name(project: &str, stream: Stream) -> String {
    let id = match stream {
        Stream::Stdout => "run.googleapis.com%2Fstdout",
        Stream::Stderr => "run.googleapis.com%2Fstderr",
        Stream::Platform => "run.googleapis.com%2Fvarlog%2Fsystem",
        Stream::Requests => "run.googleapis.com%2Frequests",
    };
    format!("projects/{project}/logs/{id}")
}

/// The entry in Logging v2's `LogEntry` shape: `logName` and the resource's `project_id` are
/// the entry's own project.
pub fn render(entry: &LogEntry, origin: &Origin) -> Value {
    let project = entry.project.as_deref().unwrap_or(&origin.project);
    let mut labels = Map::new();
    labels.insert("instanceId".into(), Value::String(entry.instance.clone()));
    let resource = match (&entry.service, &entry.job) {
        (_, Some(job)) => {
            if let Some(execution) = &entry.execution {
                labels.insert("run.googleapis.com/execution_name".into(), Value::String(execution.clone()));
            }
            if let Some(index) = entry.task_index {
                labels.insert("run.googleapis.com/task_index".into(), Value::String(index.to_string()));
            }
            if let Some(attempt) = entry.task_attempt {
                labels.insert("run.googleapis.com/task_attempt".into(), Value::String(attempt.to_string()));
            }
            json!({"type": "cloud_run_job", "labels": {
                "job_name": job, "location": origin.location("job", job), "project_id": project,
            }})
        }
        (service, None) => json!({"type": "cloud_run_revision", "labels": {
            "service_name": service.clone().unwrap_or_default(),
            "revision_name": entry.revision.clone().unwrap_or_default(),
            "configuration_name": service.clone().unwrap_or_default(),
            "location": origin.location("service", service.as_deref().unwrap_or_default()),
            "project_id": project,
        }}),
    };
    let timestamp = timestamp(entry.timestamp_us);
    let mut out = Map::new();
    out.insert("logName".into(), Value::String(log_name(project, entry.stream)));
    out.insert("resource".into(), resource);
    out.insert("timestamp".into(), Value::String(timestamp.clone()));
    out.insert("receiveTimestamp".into(), Value::String(timestamp));
    out.insert("severity".into(), Value::String(entry.severity.clone()));
    out.insert("insertId".into(), Value::String(format!("{:016x}", entry.id)));
    match &entry.payload {
        Some(Value::Object(payload)) => {
            let mut payload = payload.clone();
            if let Some(request) = payload.remove("httpRequest") {
                out.insert("httpRequest".into(), request);
            }
            if let Some(Value::Object(extra)) = payload.remove("logging.googleapis.com/labels") {
                for (key, value) in extra {
                    labels.entry(key).or_insert(value);
                }
            }
            if let Some(trace) = payload.remove("logging.googleapis.com/trace") {
                out.insert("trace".into(), trace);
            }
            if let Some(span) = payload.remove("logging.googleapis.com/spanId") {
                out.insert("spanId".into(), span);
            }
            payload.remove("severity");
            // A request log entry's details are all lifted out: it has no payload, as in
            // Cloud Run.
            if entry.stream != Stream::Requests || !payload.is_empty() {
                out.insert("jsonPayload".into(), Value::Object(payload));
            }
        }
        _ => {
            out.insert("textPayload".into(), Value::String(entry.message.clone()));
        }
    }
    out.insert("labels".into(), Value::Object(labels));
    Value::Object(out)
}

/// RFC 3339 in UTC with microseconds.
pub fn timestamp(micros: i64) -> String {
    jiff::Timestamp::from_microsecond(micros)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(payload: Option<Value>, job: bool) -> LogEntry {
        LogEntry {
            id: 42,
            project: Some("p".into()),
            timestamp_us: 1_764_000_000_123_456,
            stream: Stream::Stdout,
            severity: "WARNING".into(),
            message: "slow".into(),
            payload,
            instance: "i-7".into(),
            service: (!job).then(|| "api".into()),
            revision: (!job).then(|| "api-00001-xyz".into()),
            job: job.then(|| "nightly".into()),
            execution: job.then(|| "nightly-abc".into()),
            task_index: job.then_some(3),
            task_attempt: job.then_some(1),
        }
    }

    fn origin() -> Origin {
        let locations = [(("service", "api".to_owned()), "us-central1".to_owned())].into_iter().collect();
        Origin { project: "p".into(), locations }
    }

    #[test]
    fn service_lines_look_like_cloud_run_revision_entries() {
        let e = render(&line(None, false), &origin());
        assert_eq!(e["resource"]["type"], "cloud_run_revision");
        assert_eq!(e["resource"]["labels"]["service_name"], "api");
        assert_eq!(e["resource"]["labels"]["revision_name"], "api-00001-xyz");
        assert_eq!(e["resource"]["labels"]["location"], "us-central1");
        assert_eq!(e["logName"], "projects/p/logs/run.googleapis.com%2Fstdout");
        assert_eq!(e["textPayload"], "slow");
        assert_eq!(e["timestamp"], "2025-11-24T16:00:00.123456Z");
        assert_eq!(e["labels"]["instanceId"], "i-7");
    }

    #[test]
    fn job_lines_carry_execution_and_task_labels_and_structured_fields_are_lifted() {
        let payload = json!({
            "message": "done", "severity": "WARNING", "rows": 7,
            "httpRequest": {"status": 503},
            "logging.googleapis.com/labels": {"team": "data"},
            "logging.googleapis.com/trace": "projects/p/traces/abc",
        });
        let e = render(&line(Some(payload), true), &origin());
        assert_eq!(e["resource"]["type"], "cloud_run_job");
        assert_eq!(e["resource"]["labels"]["job_name"], "nightly");
        assert_eq!(e["resource"]["labels"]["location"], Value::Null, "a job the origin does not know");
        assert_eq!(e["labels"]["run.googleapis.com/execution_name"], "nightly-abc");
        assert_eq!(e["labels"]["run.googleapis.com/task_index"], "3");
        assert_eq!(e["labels"]["team"], "data");
        assert_eq!(e["httpRequest"]["status"], 503);
        assert_eq!(e["trace"], "projects/p/traces/abc");
        assert_eq!(e["jsonPayload"], json!({"message": "done", "rows": 7}));
        assert!(e.get("textPayload").is_none());
    }
}
