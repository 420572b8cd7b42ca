//! Instance logs: stdout and stderr captured line by line, labelled with the service,
//! revision and instance (or job, execution and task) that wrote them, and stored durably in
//! the state database with a retention bound. A line that is a JSON object with `severity` or
//! `message` is a structured entry, as Cloud Logging reads it; other stdout lines are INFO and
//! stderr lines ERROR. The platform's own lines about an instance (why it failed, say) are
//! stored alongside with stream `platform`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use wharf_store::Store;
use wharf_store::rusqlite::{ToSql, params};

use crate::contract::Owner;

/// Cloud Logging's severities, in order.
pub const SEVERITIES: &[(&str, i64)] = &[
    ("DEFAULT", 0),
    ("DEBUG", 100),
    ("INFO", 200),
    ("NOTICE", 300),
    ("WARNING", 400),
    ("ERROR", 500),
    ("CRITICAL", 600),
    ("ALERT", 700),
    ("EMERGENCY", 800),
];

pub fn severity_number(name: &str) -> Option<i64> {
    let upper = name.to_ascii_uppercase();
    let upper = if upper == "WARN" { "WARNING".to_owned() } else { upper };
    SEVERITIES.iter().find(|(n, _)| *n == upper).map(|(_, v)| *v)
}

fn severity_name(number: i64) -> &'static str {
    SEVERITIES.iter().rev().find(|(_, v)| *v <= number).map_or("DEFAULT", |(n, _)| n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    Platform,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Platform => "platform",
        }
    }
}

/// One stored log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub id: i64,
    /// Microseconds since the Unix epoch.
    pub timestamp_us: i64,
    pub stream: Stream,
    pub severity: String,
    pub message: String,
    /// The whole JSON object, when the line was structured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    pub instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_attempt: Option<u32>,
}

/// Which lines to read. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub service: Option<String>,
    pub revision: Option<String>,
    pub job: Option<String>,
    pub execution: Option<String>,
    pub task_index: Option<u32>,
    pub instance: Option<String>,
    /// Lines at or above this severity.
    pub min_severity: Option<i64>,
    /// Lines with an id above this (for tailing).
    pub after_id: Option<i64>,
    /// At most this many: the newest ones, returned oldest first.
    pub limit: usize,
}

enum Message {
    Line(Box<LogEntry>),
    Flush(oneshot::Sender<()>),
}

/// The log store: appends go through a channel to one batching writer task.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Store,
    tx: mpsc::Sender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogMessage")
    }
}

impl LogStore {
    /// Starts the writer; keeps at most `max_lines` lines (oldest dropped first).
    pub fn open(db: Store, max_lines: i64) -> LogStore {
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(writer(db.clone(), rx, max_lines));
        LogStore { db, tx }
    }

    /// Records a line `owner`'s instance wrote on `stream`.
    pub async fn append(&self, owner: &Owner, instance: &str, stream: Stream, line: &str) {
        let entry = parse_line(owner, instance, stream, line);
        let _ = self.tx.send(Message::Line(Box::new(entry))).await;
    }

    /// Records a platform line about an instance.
    pub async fn platform(&self, owner: &Owner, instance: &str, severity: &str, message: &str) {
        let mut entry = parse_line(owner, instance, Stream::Platform, "");
        entry.severity = severity.to_owned();
        entry.message = message.to_owned();
        let _ = self.tx.send(Message::Line(Box::new(entry))).await;
    }

    /// Waits until every line appended so far is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Reads stored lines matching `filter` (after a flush, so it sees every appended line).
    pub async fn query(&self, filter: &LogFilter) -> Result<Vec<LogEntry>, wharf_store::StoreError> {
        self.flush().await;
        let mut sql = String::from(
            "SELECT id, ts_us, stream, severity, message, payload, instance, service, revision, job, execution,
                    task_index, task_attempt FROM logs WHERE 1 = 1",
        );
        let mut args: Vec<Box<dyn ToSql>> = Vec::new();
        let mut add = |clause: &str, value: Box<dyn ToSql>| {
            sql.push_str(&format!(" AND {clause} ?{}", args.len() + 1));
            args.push(value);
        };
        if let Some(v) = &filter.service {
            add("service =", Box::new(v.clone()));
        }
        if let Some(v) = &filter.revision {
            add("revision =", Box::new(v.clone()));
        }
        if let Some(v) = &filter.job {
            add("job =", Box::new(v.clone()));
        }
        if let Some(v) = &filter.execution {
            add("execution =", Box::new(v.clone()));
        }
        if let Some(v) = filter.task_index {
            add("task_index =", Box::new(v));
        }
        if let Some(v) = &filter.instance {
            add("instance =", Box::new(v.clone()));
        }
        if let Some(v) = filter.min_severity {
            add("severity >=", Box::new(v));
        }
        if let Some(v) = filter.after_id {
            add("id >", Box::new(v));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", filter.limit.max(1)));
        let mut rows = self.db.read(|c| {
            let mut stmt = c.prepare(&sql)?;
            let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
            let rows = stmt.query_map(refs.as_slice(), |r| {
                let stream: String = r.get(2)?;
                let payload: Option<String> = r.get(5)?;
                Ok(LogEntry {
                    id: r.get(0)?,
                    timestamp_us: r.get(1)?,
                    stream: match stream.as_str() {
                        "stdout" => Stream::Stdout,
                        "stderr" => Stream::Stderr,
                        _ => Stream::Platform,
                    },
                    severity: severity_name(r.get(3)?).to_owned(),
                    message: r.get(4)?,
                    payload: payload.and_then(|p| serde_json::from_str(&p).ok()),
                    instance: r.get(6)?,
                    service: r.get(7)?,
                    revision: r.get(8)?,
                    job: r.get(9)?,
                    execution: r.get(10)?,
                    task_index: r.get(11)?,
                    task_attempt: r.get(12)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()
        })?;
        rows.reverse();
        Ok(rows)
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Turns one output line into an entry, reading structured JSON lines as Cloud Logging does.
pub fn parse_line(owner: &Owner, instance: &str, stream: Stream, line: &str) -> LogEntry {
    let (mut severity, mut message, mut payload) =
        (if stream == Stream::Stderr { "ERROR" } else { "INFO" }.to_owned(), line.to_owned(), None);
    if line.trim_start().starts_with('{')
        && let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(line)
        && (map.contains_key("severity") || map.contains_key("message"))
    {
        if let Some(s) = map.get("severity").and_then(|s| s.as_str())
            && let Some(n) = severity_number(s)
        {
            severity = severity_name(n).to_owned();
        }
        message = match map.get("message") {
            Some(serde_json::Value::String(m)) => m.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        payload = Some(serde_json::Value::Object(map));
    }
    let mut entry = LogEntry {
        id: 0,
        timestamp_us: now_us(),
        stream,
        severity,
        message,
        payload,
        instance: instance.to_owned(),
        service: None,
        revision: None,
        job: None,
        execution: None,
        task_index: None,
        task_attempt: None,
    };
    match owner {
        Owner::Service { service, revision, .. } => {
            entry.service = Some(service.clone());
            entry.revision = Some(revision.clone());
        }
        Owner::Task { job, execution, index, attempt, .. } => {
            entry.job = Some(job.clone());
            entry.execution = Some(execution.clone());
            entry.task_index = Some(*index);
            entry.task_attempt = Some(*attempt);
        }
    }
    entry
}

async fn writer(db: Store, mut rx: mpsc::Receiver<Message>, max_lines: i64) {
    let mut batch = Vec::with_capacity(512);
    let mut since_prune = 0usize;
    while rx.recv_many(&mut batch, 512).await > 0 {
        let mut lines = Vec::new();
        let mut flushes = Vec::new();
        for message in batch.drain(..) {
            match message {
                Message::Line(entry) => lines.push(entry),
                Message::Flush(done) => flushes.push(done),
            }
        }
        if !lines.is_empty() {
            since_prune += lines.len();
            let result = db.write(|tx| {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO logs (ts_us, stream, severity, message, payload, service, revision, job,
                                       execution, task_index, task_attempt, instance)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?;
                for e in &lines {
                    stmt.execute(params![
                        e.timestamp_us,
                        e.stream.as_str(),
                        severity_number(&e.severity).unwrap_or(0),
                        e.message,
                        e.payload.as_ref().map(|p| p.to_string()),
                        e.service,
                        e.revision,
                        e.job,
                        e.execution,
                        e.task_index,
                        e.task_attempt,
                        e.instance,
                    ])?;
                }
                if since_prune >= 1000 {
                    tx.execute("DELETE FROM logs WHERE id <= (SELECT max(id) FROM logs) - ?1", [max_lines])?;
                }
                Ok::<_, wharf_store::StoreError>(())
            });
            if since_prune >= 1000 {
                since_prune = 0;
            }
            if let Err(e) = result {
                tracing::error!(error = %e, lost = lines.len(), "storing log lines failed");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner::Service { service: "s".into(), revision: "s-1".into(), configuration: "s".into() }
    }

    #[test]
    fn structured_lines_are_parsed() {
        let e = parse_line(&owner(), "i", Stream::Stdout, r#"{"severity":"warning","message":"disk low","free":3}"#);
        assert_eq!((e.severity.as_str(), e.message.as_str()), ("WARNING", "disk low"));
        assert_eq!(e.payload.unwrap()["free"], 3);
        let e = parse_line(&owner(), "i", Stream::Stderr, "plain failure");
        assert_eq!((e.severity.as_str(), e.message.as_str(), e.payload), ("ERROR", "plain failure", None));
        let e = parse_line(&owner(), "i", Stream::Stdout, r#"{"not":"a log"}"#);
        assert_eq!(e.severity, "INFO");
        assert!(e.payload.is_none());
    }

    #[tokio::test]
    async fn stores_filters_and_bounds_retention() {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        let logs = LogStore::open(db.clone(), 1500);
        // Far more lines than kept, so a store without retention holds 5,001.
        for i in 0..5000 {
            logs.append(&owner(), "inst", Stream::Stdout, &format!("line {i}")).await;
        }
        logs.platform(&owner(), "inst", "ERROR", "Memory limit of 512 MiB exceeded").await;
        let errors = logs
            .query(&LogFilter { service: Some("s".into()), min_severity: Some(500), limit: 10, ..LogFilter::default() })
            .await
            .unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].message, "Memory limit of 512 MiB exceeded");
        let last = logs.query(&LogFilter { limit: 2, ..LogFilter::default() }).await.unwrap();
        assert_eq!(last[0].message, "line 4999");
        // Pruning runs every 1,000 lines and keeps the newest 1,500: between prunes at most
        // 999 more lines are stored, never fewer than 1,500, and what is kept is the newest.
        let (total, oldest_id, newest_id): (i64, i64, i64) = db
            .read(|c| {
                c.query_row("SELECT count(*), min(id), max(id) FROM logs", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
            })
            .unwrap();
        assert!((1500..1500 + 1000).contains(&total), "retention not applied as documented: {total} lines kept");
        assert_eq!(newest_id - oldest_id + 1, total, "kept lines are not the newest, contiguous ones");
        let oldest: String =
            db.read(|c| c.query_row("SELECT message FROM logs WHERE id = ?1", [oldest_id], |r| r.get(0))).unwrap();
        assert_eq!(
            oldest,
            format!("line {}", 5000 - (total - 1)),
            "the oldest kept line is not the newest but {total}"
        );
        let none =
            logs.query(&LogFilter { revision: Some("other".into()), limit: 10, ..LogFilter::default() }).await.unwrap();
        assert_eq!(none, []);
    }
}
