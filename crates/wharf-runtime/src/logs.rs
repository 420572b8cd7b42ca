//! Instance logs: stdout and stderr captured line by line, labelled with the project,
//! service, revision and instance (or job, execution and task) that wrote them, and stored durably in
//! the state database with a retention bound. A line that is a JSON object with `severity` or
//! `message` is a structured entry, as Cloud Logging reads it; other stdout lines are INFO and
//! stderr lines ERROR. The platform's own lines about an instance (why it failed, say) are
//! stored alongside with stream `platform`, and the ingress's request log entries (one per
//! proxied request, built by `wharf_logging::requests`) with stream `requests`.
//!
//! Limits, so that one instance can neither fill the disk nor slow others' logs:
//! - each instance writes through its own queue ([`InstanceLog`]); the one writer task takes
//!   lines from every queue in turn, so a noisy instance waits on its own queue only;
//! - each instance may log [`LogLimits::lines_per_second`] lines and
//!   [`LogLimits::bytes_per_second`] bytes a second; the excess is dropped and counted, and a
//!   platform line says how many (`wharf: dropped N lines (rate limit 1000 lines/s)`);
//! - a line is at most [`LogLimits::line_bytes`] long (the reader replaces longer ones);
//! - the store keeps at most [`LogLimits::store_bytes`] (and a number of lines), the oldest
//!   lines going first.
//!
//! The writer commits in groups: woken by a line, it waits [`COMMIT_WINDOW`] for more
//! before it writes them in one transaction (unless a reader is waiting on a flush), so
//! that a busy ingress's request log costs one commit per window, not one per request.

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
    /// Request log entries: one per proxied request, details in the payload's `httpRequest`.
    Requests,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Platform => "platform",
            Stream::Requests => "requests",
        }
    }
}

/// The `instance` label of admin audit log entries ([`LogStore::audit`]).
pub const AUDIT_INSTANCE: &str = "audit";

/// One stored log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub id: i64,
    /// The project whose service or job wrote it; `None` for server-wide lines (the admin
    /// audit log) and lines stored before projects were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
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
    /// Lines of this project only.
    pub project: Option<String>,
    pub service: Option<String>,
    pub revision: Option<String>,
    pub job: Option<String>,
    pub execution: Option<String>,
    pub task_index: Option<u32>,
    pub instance: Option<String>,
    /// Lines at or above this severity.
    pub min_severity: Option<i64>,
    /// Lines at or below this severity.
    pub max_severity: Option<i64>,
    /// Only service lines, or only job lines.
    pub kind: Option<OwnerKind>,
    /// Lines at or after this instant (microseconds since the epoch).
    pub since_us: Option<i64>,
    /// Lines at or before this instant.
    pub until_us: Option<i64>,
    /// Lines whose message contains this text (ASCII case-insensitive).
    pub message_contains: Option<String>,
    /// Lines with an id above this (for tailing).
    pub after_id: Option<i64>,
    /// Lines with an id below this (for paging backwards).
    pub before_id: Option<i64>,
    /// At most this many: the newest ones, returned oldest first; with `oldest_first`, the
    /// oldest ones.
    pub limit: usize,
    pub oldest_first: bool,
}

/// Whose lines: a service's instances or a job's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    Service,
    Job,
}

/// Bounds on what instances may log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// The longest line kept, in bytes.
    pub line_bytes: usize,
    /// Lines each instance may log per second.
    pub lines_per_second: u32,
    /// Bytes each instance may log per second.
    pub bytes_per_second: u64,
    /// Total size of the stored lines (messages, payloads and labels).
    pub store_bytes: u64,
}

impl Default for LogLimits {
    fn default() -> LogLimits {
        LogLimits { line_bytes: 16 * 1024, lines_per_second: 1000, bytes_per_second: 1 << 20, store_bytes: 1 << 30 }
    }
}

/// What a stored line is counted as against [`LogLimits::store_bytes`]: its text plus a
/// fixed amount for its labels and row.
const ROW_OVERHEAD: u64 = 64;

/// How many lines one instance's queue holds before its reader waits (and, with it, the
/// instance's writes to its pipe).
const INSTANCE_QUEUE: usize = 1024;

/// How many lines the writer takes from one queue before it turns to the next.
const TURN: usize = 64;

/// How long the writer lets lines gather after the first before it stores them together.
const COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

/// The most lines stored in one transaction.
const MAX_BATCH: usize = 4096;

enum Control {
    Line(Box<LogEntry>),
    Queue(mpsc::Receiver<Box<LogEntry>>),
    Flush(oneshot::Sender<()>),
}

/// The log store: appends go to one batching writer task, an instance's lines through its
/// own queue ([`LogStore::instance`]), the platform's through a shared control channel.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Store,
    control: mpsc::UnboundedSender<Control>,
    limits: LogLimits,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogControl")
    }
}

impl LogStore {
    /// Starts the writer; keeps at most `max_lines` lines and `limits.store_bytes` bytes
    /// (oldest dropped first).
    pub fn open(db: Store, max_lines: i64, limits: LogLimits) -> LogStore {
        let (control, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(db.clone(), rx, max_lines, limits.store_bytes));
        LogStore { db, control, limits }
    }

    pub fn limits(&self) -> LogLimits {
        self.limits
    }

    /// The log of one instance of `project`: its own queue, its own rate budget.
    pub fn instance(&self, owner: &Owner, project: Option<String>, instance: &str) -> InstanceLog {
        let (tx, rx) = mpsc::channel(INSTANCE_QUEUE);
        let _ = self.control.send(Control::Queue(rx));
        InstanceLog {
            store: self.clone(),
            owner: owner.clone(),
            project,
            instance: instance.to_owned(),
            tx,
            budget: std::sync::Mutex::new(Budget::new(tokio::time::Instant::now())),
        }
    }

    /// Records a line `owner`'s instance wrote on `stream`, outside any rate budget (tools
    /// and tests; instances write through [`InstanceLog`]).
    pub async fn append(&self, owner: &Owner, project: Option<&str>, instance: &str, stream: Stream, line: &str) {
        let mut entry = parse_line(owner, instance, stream, line);
        entry.project = project.map(str::to_owned);
        let _ = self.control.send(Control::Line(Box::new(entry)));
    }

    /// Records a platform line about an instance.
    pub async fn platform(&self, owner: &Owner, project: Option<&str>, instance: &str, severity: &str, message: &str) {
        let mut entry = parse_line(owner, instance, Stream::Platform, "");
        entry.project = project.map(str::to_owned);
        entry.severity = severity.to_owned();
        entry.message = message.to_owned();
        let _ = self.control.send(Control::Line(Box::new(entry)));
    }

    /// Records an entry of the admin audit log: who called which API method on which
    /// resource and whether it was allowed. Audit entries are platform lines of the pseudo
    /// instance [`AUDIT_INSTANCE`] with no service or job, their details in `payload`.
    pub async fn audit(&self, severity: &str, message: String, payload: serde_json::Value) {
        let entry = LogEntry {
            id: 0,
            project: None,
            timestamp_us: now_us(),
            stream: Stream::Platform,
            severity: severity.to_owned(),
            message,
            payload: Some(payload),
            instance: AUDIT_INSTANCE.to_owned(),
            service: None,
            revision: None,
            job: None,
            execution: None,
            task_index: None,
            task_attempt: None,
        };
        let _ = self.control.send(Control::Line(Box::new(entry)));
    }

    /// A queue of prebuilt entries (request log entries, say) of its own, holding up to
    /// `capacity` entries: the writer takes from it in turn with the instances' queues, and a
    /// full queue makes its sender wait (back-pressure) rather than grow.
    pub fn queue(&self, capacity: usize) -> mpsc::Sender<Box<LogEntry>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let _ = self.control.send(Control::Queue(rx));
        tx
    }

    /// Waits until every line appended so far (by any instance) is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Reads stored lines matching `filter` (after a flush, so it sees every appended line).
    pub async fn query(&self, filter: &LogFilter) -> Result<Vec<LogEntry>, wharf_store::StoreError> {
        self.flush().await;
        let mut sql = String::from(
            "SELECT id, ts_us, stream, severity, message, payload, instance, service, revision, job, execution,
                    task_index, task_attempt, project FROM logs WHERE 1 = 1",
        );
        let mut args: Vec<Box<dyn ToSql>> = Vec::new();
        let mut add = |clause: &str, value: Box<dyn ToSql>| {
            sql.push_str(&format!(" AND {clause} ?{}", args.len() + 1));
            args.push(value);
        };
        if let Some(v) = &filter.project {
            add("project =", Box::new(v.clone()));
        }
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
        if let Some(v) = filter.max_severity {
            add("severity <=", Box::new(v));
        }
        if let Some(v) = filter.since_us {
            add("ts_us >=", Box::new(v));
        }
        if let Some(v) = filter.until_us {
            add("ts_us <=", Box::new(v));
        }
        if let Some(v) = &filter.message_contains {
            let escaped = v.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            sql.push_str(&format!(" AND message LIKE ?{} ESCAPE '\\'", args.len() + 1));
            args.push(Box::new(format!("%{escaped}%")));
        }
        match filter.kind {
            Some(OwnerKind::Service) => sql.push_str(" AND job IS NULL"),
            Some(OwnerKind::Job) => sql.push_str(" AND job IS NOT NULL"),
            None => {}
        }
        if let Some(v) = filter.after_id {
            sql.push_str(&format!(" AND id > ?{}", args.len() + 1));
            args.push(Box::new(v));
        }
        if let Some(v) = filter.before_id {
            sql.push_str(&format!(" AND id < ?{}", args.len() + 1));
            args.push(Box::new(v));
        }
        let order = if filter.oldest_first { "ASC" } else { "DESC" };
        sql.push_str(&format!(" ORDER BY id {order} LIMIT {}", filter.limit.max(1)));
        let mut rows = self.db.read(|c| {
            let mut stmt = c.prepare(&sql)?;
            let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
            let rows = stmt.query_map(refs.as_slice(), |r| {
                let stream: String = r.get(2)?;
                let payload: Option<String> = r.get(5)?;
                Ok(LogEntry {
                    id: r.get(0)?,
                    project: r.get(13)?,
                    timestamp_us: r.get(1)?,
                    stream: match stream.as_str() {
                        "stdout" => Stream::Stdout,
                        "stderr" => Stream::Stderr,
                        "requests" => Stream::Requests,
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
        if !filter.oldest_first {
            rows.reverse();
        }
        Ok(rows)
    }
}

/// One instance's rate budget: lines and bytes in the current one-second window, and lines
/// dropped since the last marker.
#[derive(Debug)]
struct Budget {
    window: tokio::time::Instant,
    lines: u32,
    bytes: u64,
    dropped: u64,
}

impl Budget {
    fn new(now: tokio::time::Instant) -> Budget {
        Budget { window: now, lines: 0, bytes: 0, dropped: 0 }
    }

    /// Whether a line of `len` bytes fits at `now`; also returns how many lines were dropped
    /// before it when a new window begins (for the marker).
    fn admit(&mut self, now: tokio::time::Instant, len: u64, limits: &LogLimits) -> (bool, u64) {
        let mut report = 0;
        if now.duration_since(self.window) >= std::time::Duration::from_secs(1) {
            report = std::mem::take(&mut self.dropped);
            *self = Budget::new(now);
        }
        if self.lines < limits.lines_per_second && self.bytes + len <= limits.bytes_per_second {
            self.lines += 1;
            self.bytes += len;
            (true, report)
        } else {
            self.dropped += 1;
            (false, report)
        }
    }
}

/// Where one instance's output lines go: rate-limited, through the instance's own queue.
#[derive(Debug)]
pub struct InstanceLog {
    store: LogStore,
    owner: Owner,
    project: Option<String>,
    instance: String,
    tx: mpsc::Sender<Box<LogEntry>>,
    budget: std::sync::Mutex<Budget>,
}

impl InstanceLog {
    /// Records a line the instance wrote, unless it is over its rate budget (then it is
    /// counted, and reported by a marker line once the next window starts or the output
    /// ends). Waits only while this instance's own queue is full.
    pub async fn line(&self, stream: Stream, line: &str) {
        let limits = self.store.limits;
        let (admitted, dropped) = {
            let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
            budget.admit(tokio::time::Instant::now(), line.len() as u64, &limits)
        };
        if dropped > 0 {
            self.marker(dropped).await;
        }
        if admitted {
            let mut entry = parse_line(&self.owner, &self.instance, stream, line);
            entry.project.clone_from(&self.project);
            let _ = self.tx.send(Box::new(entry)).await;
        }
    }

    /// Reports lines dropped and not reported yet; for when the instance's output ends.
    pub async fn finish(&self) {
        let dropped = std::mem::take(&mut self.budget.lock().unwrap_or_else(|p| p.into_inner()).dropped);
        if dropped > 0 {
            self.marker(dropped).await;
        }
    }

    async fn marker(&self, dropped: u64) {
        let limits = self.store.limits;
        let message = format!(
            "wharf: dropped {dropped} lines (rate limit {} lines/s, {} bytes/s)",
            limits.lines_per_second, limits.bytes_per_second
        );
        let mut entry = parse_line(&self.owner, &self.instance, Stream::Platform, "");
        entry.project.clone_from(&self.project);
        entry.severity = "WARNING".to_owned();
        entry.message = message;
        let _ = self.tx.send(Box::new(entry)).await;
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Turns one output line into an entry, reading structured JSON lines as Cloud Logging does.
/// The entry has no project: the caller sets it.
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
        project: None,
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

/// What the writer waits for next.
enum Next {
    Control(Control),
    /// Lines taken from the instances' queues (into the batch).
    Lines,
    Closed,
}

/// Takes up to [`TURN`] lines from each queue in turn, starting after the one served first
/// last time, so that every instance gets its share; drops queues whose instance is gone.
fn take_lines(
    cx: &mut std::task::Context<'_>,
    queues: &mut Vec<mpsc::Receiver<Box<LogEntry>>>,
    first: &mut usize,
    batch: &mut Vec<LogEntry>,
) {
    let n = queues.len();
    let mut closed = Vec::new();
    for k in 0..n {
        let i = (*first + k) % n;
        for _ in 0..TURN {
            match queues[i].poll_recv(cx) {
                std::task::Poll::Ready(Some(entry)) => batch.push(*entry),
                std::task::Poll::Ready(None) => {
                    closed.push(i);
                    break;
                }
                std::task::Poll::Pending => break,
            }
        }
    }
    *first = if n == 0 { 0 } else { (*first + 1) % n };
    closed.sort_unstable();
    for i in closed.into_iter().rev() {
        queues.swap_remove(i);
    }
}

async fn writer(db: Store, mut control: mpsc::UnboundedReceiver<Control>, max_lines: i64, store_bytes: u64) {
    let mut stored = db
        .read(|c| {
            c.query_row(
                "SELECT ifnull(sum(length(message) + ifnull(length(payload), 0)), 0), count(*) FROM logs",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
        })
        .map(|(bytes, rows)| bytes.unsigned_abs() + rows.unsigned_abs() * ROW_OVERHEAD)
        .unwrap_or(0);
    let mut queues: Vec<mpsc::Receiver<Box<LogEntry>>> = Vec::new();
    let mut first = 0;
    let mut since_prune = 0usize;
    let mut control_open = true;
    loop {
        let mut batch: Vec<LogEntry> = Vec::new();
        let mut flushes = Vec::new();
        let next = std::future::poll_fn(|cx| {
            if control_open {
                match control.poll_recv(cx) {
                    std::task::Poll::Ready(Some(c)) => return std::task::Poll::Ready(Next::Control(c)),
                    std::task::Poll::Ready(None) => control_open = false,
                    std::task::Poll::Pending => {}
                }
            }
            take_lines(cx, &mut queues, &mut first, &mut batch);
            if !batch.is_empty() {
                std::task::Poll::Ready(Next::Lines)
            } else if !control_open && queues.is_empty() {
                std::task::Poll::Ready(Next::Closed)
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        match next {
            Next::Closed => return,
            Next::Lines => {}
            Next::Control(Control::Queue(rx)) => {
                queues.push(rx);
                continue;
            }
            Next::Control(Control::Line(entry)) => batch.push(*entry),
            Next::Control(Control::Flush(done)) => {
                // Everything appended before the flush is in some queue by now: take it all.
                for queue in &mut queues {
                    while let Ok(entry) = queue.try_recv() {
                        batch.push(*entry);
                    }
                }
                flushes.push(done);
            }
        }
        // Unless a reader waits, let more lines gather for one commit.
        if flushes.is_empty() && !batch.is_empty() && batch.len() < MAX_BATCH {
            tokio::time::sleep(COMMIT_WINDOW).await;
        }
        // Lines and flushes waiting now join this batch.
        while batch.len() < MAX_BATCH {
            match control.try_recv() {
                Ok(Control::Line(entry)) => batch.push(*entry),
                Ok(Control::Queue(rx)) => queues.push(rx),
                Ok(Control::Flush(done)) => {
                    for queue in &mut queues {
                        while let Ok(entry) = queue.try_recv() {
                            batch.push(*entry);
                        }
                    }
                    flushes.push(done);
                }
                Err(_) => break,
            }
        }
        while batch.len() < MAX_BATCH {
            let before = batch.len();
            std::future::poll_fn(|cx| {
                take_lines(cx, &mut queues, &mut first, &mut batch);
                std::task::Poll::Ready(())
            })
            .await;
            if batch.len() == before {
                break;
            }
        }
        if !batch.is_empty() {
            since_prune += batch.len();
            let payloads: Vec<Option<String>> =
                batch.iter().map(|e| e.payload.as_ref().map(serde_json::Value::to_string)).collect();
            stored += batch
                .iter()
                .zip(&payloads)
                .map(|(e, payload)| (e.message.len() + payload.as_ref().map_or(0, String::len)) as u64 + ROW_OVERHEAD)
                .sum::<u64>();
            let prune_lines = since_prune >= 1000;
            let result = db.write(|tx| {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO logs (ts_us, stream, severity, message, payload, service, revision, job,
                                       execution, task_index, task_attempt, instance, project)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )?;
                for (e, payload) in batch.iter().zip(&payloads) {
                    stmt.execute(params![
                        e.timestamp_us,
                        e.stream.as_str(),
                        severity_number(&e.severity).unwrap_or(0),
                        e.message,
                        payload,
                        e.service,
                        e.revision,
                        e.job,
                        e.execution,
                        e.task_index,
                        e.task_attempt,
                        e.instance,
                        e.project,
                    ])?;
                }
                if prune_lines {
                    tx.execute("DELETE FROM logs WHERE id <= (SELECT max(id) FROM logs) - ?1", [max_lines])?;
                }
                // Over the size cap: drop the oldest lines, in chunks, to 90% of it.
                while stored > store_bytes {
                    let (last, bytes): (Option<i64>, i64) = tx.query_row(
                        "SELECT max(id), ifnull(sum(length(message) + ifnull(length(payload), 0) + ?1), 0)
                         FROM (SELECT id, message, payload FROM logs ORDER BY id LIMIT 100)",
                        [i64::try_from(ROW_OVERHEAD).unwrap_or(64)],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    let Some(last) = last else {
                        stored = 0;
                        break;
                    };
                    tx.execute("DELETE FROM logs WHERE id <= ?1", [last])?;
                    stored = stored.saturating_sub(bytes.unsigned_abs());
                    if stored <= store_bytes / 10 * 9 {
                        break;
                    }
                }
                Ok::<_, wharf_store::StoreError>(())
            });
            if prune_lines {
                since_prune = 0;
            }
            if let Err(e) = result {
                tracing::error!(error = %e, lost = batch.len(), "storing log lines failed");
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
    async fn lines_carry_their_project_and_a_project_reads_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(Store::open(&dir.path().join("state.db")).unwrap(), 1000, LogLimits::default());
        logs.append(&owner(), Some("a"), "i1", Stream::Stdout, "from a").await;
        logs.append(&owner(), Some("b"), "i2", Stream::Stdout, "from b, same service name").await;
        logs.instance(&owner(), Some("a".into()), "i3").line(Stream::Stderr, "from a's instance").await;
        logs.platform(&owner(), Some("a"), "i3", "ERROR", "a's instance failed").await;
        logs.audit("INFO", "server-wide".into(), serde_json::json!({})).await;
        let read = |project: Option<&str>| {
            let filter = LogFilter {
                project: project.map(str::to_owned),
                limit: 10,
                oldest_first: true,
                ..LogFilter::default()
            };
            let logs = logs.clone();
            async move { logs.query(&filter).await.unwrap() }
        };
        let mut a: Vec<(Option<String>, String)> =
            read(Some("a")).await.into_iter().map(|e| (e.project, e.message)).collect();
        // Lines of one instance's queue and the platform's channel may be stored in either order.
        a.sort();
        let a_ = |m: &str| (Some("a".to_owned()), m.to_owned());
        assert_eq!(a, [a_("a's instance failed"), a_("from a"), a_("from a's instance")]);
        assert_eq!(read(Some("b")).await.len(), 1);
        assert_eq!(read(Some("c")).await, []);
        assert_eq!(read(None).await.len(), 5, "no project filter: every line, the audit line without a project");
    }

    #[tokio::test]
    async fn stores_filters_and_bounds_retention() {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        let logs = LogStore::open(db.clone(), 1500, LogLimits::default());
        // Far more lines than kept, so a store without retention holds 5,001.
        for i in 0..5000 {
            logs.append(&owner(), Some("p"), "inst", Stream::Stdout, &format!("line {i}")).await;
        }
        logs.platform(&owner(), Some("p"), "inst", "ERROR", "Memory limit of 512 MiB exceeded").await;
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

    #[tokio::test]
    async fn queued_entries_are_all_stored_and_owner_queries_use_their_partial_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        let logs = LogStore::open(db.clone(), 1_000_000, LogLimits::default());
        let queue = logs.queue(8);
        let entry = |i: usize| {
            let mut entry = parse_line(&owner(), "inst", Stream::Requests, "");
            entry.project = Some("p".into());
            entry.message = format!("GET 200 /{i}");
            entry.payload = Some(serde_json::json!({ "httpRequest": { "status": 200 } }));
            Box::new(entry)
        };
        // More entries than the queue holds: the sender waits on the writer, nothing is lost.
        for i in 0..100 {
            queue.send(entry(i)).await.unwrap();
        }
        let stored = logs.query(&LogFilter { service: Some("s".into()), limit: 1000, ..LogFilter::default() }).await;
        let stored = stored.unwrap();
        assert_eq!(stored.len(), 100, "a flush returns once every queued entry is stored");
        assert_eq!(stored[99].message, "GET 200 /99");
        assert_eq!(stored[0].payload, Some(serde_json::json!({ "httpRequest": { "status": 200 } })));
        let plan = |sql: &str| -> String {
            db.read(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(3))?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .unwrap()
            .join("; ")
        };
        // The owner indexes are partial (non-NULL only) and still serve `column = ?` reads.
        for (column, index) in [
            ("service", "logs_service"),
            ("revision", "logs_revision"),
            ("job", "logs_job"),
            ("execution", "logs_execution"),
        ] {
            let used = plan(&format!("SELECT id FROM logs WHERE {column} = 'x' ORDER BY id DESC LIMIT 20"));
            assert!(used.contains(index), "a read by {column} does not use {index}: {used}");
            let definition: String = db
                .read(|c| c.query_row("SELECT sql FROM sqlite_master WHERE name = ?1", [index], |r| r.get(0)))
                .unwrap();
            assert!(
                definition.ends_with(&format!("WHERE {column} IS NOT NULL")),
                "{index} is not partial: {definition}"
            );
        }
    }

    fn messages(entries: &[LogEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.message.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_noisy_instance_is_rate_limited_with_a_counted_marker_and_a_quiet_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        let limits = LogLimits { lines_per_second: 100, ..LogLimits::default() };
        let logs = LogStore::open(db, 1_000_000, limits);
        let (noisy, quiet) = (logs.instance(&owner(), None, "noisy"), logs.instance(&owner(), None, "quiet"));
        for i in 0..5000 {
            noisy.line(Stream::Stdout, &format!("noise {i}")).await;
        }
        quiet.line(Stream::Stdout, "hello").await;
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        noisy.line(Stream::Stdout, "after a second").await;
        noisy.line(Stream::Stdout, "x").await;
        noisy.finish().await;

        let filter = |i: &str| LogFilter { instance: Some(i.into()), limit: 10_000, ..LogFilter::default() };
        let stored = logs.query(&filter("noisy")).await.unwrap();
        let marker = "wharf: dropped 4900 lines (rate limit 100 lines/s, 1048576 bytes/s)";
        assert_eq!(stored.len(), 100 + 3, "{:?}", &messages(&stored)[95..]);
        assert_eq!(messages(&stored)[99..], ["noise 99", marker, "after a second", "x"]);
        assert_eq!((stored[100].stream, stored[100].severity.as_str()), (Stream::Platform, "WARNING"));
        assert_eq!(messages(&logs.query(&filter("quiet")).await.unwrap()), ["hello"]);
    }

    #[tokio::test(start_paused = true)]
    async fn lines_past_the_byte_rate_are_dropped_and_reported_when_output_ends() {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        let limits = LogLimits { bytes_per_second: 1000, ..LogLimits::default() };
        let logs = LogStore::open(db, 1_000_000, limits);
        let log = logs.instance(&owner(), None, "big");
        let line = "y".repeat(300);
        for _ in 0..10 {
            log.line(Stream::Stdout, &line).await;
        }
        log.finish().await;
        let stored = logs.query(&LogFilter { limit: 100, ..LogFilter::default() }).await.unwrap();
        assert_eq!(stored.len(), 4);
        assert_eq!(stored[3].message, "wharf: dropped 7 lines (rate limit 1000 lines/s, 1000 bytes/s)");
    }

    #[tokio::test]
    async fn the_store_keeps_under_its_size_cap_dropping_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        let cap = 64 * 1024;
        let logs = LogStore::open(db.clone(), 1_000_000, LogLimits { store_bytes: cap, ..LogLimits::default() });
        let pad = "z".repeat(100);
        // About 820 KB of lines, 12 times the cap.
        for i in 0..5000 {
            logs.append(&owner(), Some("p"), "inst", Stream::Stdout, &format!("{i:05} {pad}")).await;
        }
        logs.flush().await;
        let (bytes, rows): (i64, i64) = db
            .read(|c| {
                c.query_row("SELECT sum(length(message) + ifnull(length(payload), 0)), count(*) FROM logs", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .unwrap();
        let stored = bytes.unsigned_abs() + rows.unsigned_abs() * ROW_OVERHEAD;
        assert!(stored <= cap, "{stored} bytes stored, cap {cap}");
        assert!(stored >= cap / 2, "pruned far too much: {stored} bytes left");
        let last = logs.query(&LogFilter { limit: 1, ..LogFilter::default() }).await.unwrap();
        assert!(last[0].message.starts_with("04999 "), "the newest line is kept: {}", last[0].message);
    }
}
