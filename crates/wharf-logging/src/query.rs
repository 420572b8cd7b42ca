//! Answering a filter from the log store: the top-level conjuncts the store can index
//! (service, revision, job, execution, instance, resource type, severity range, time range,
//! `textPayload:` text) are pushed down as a [`LogFilter`]; every candidate row is then
//! rendered as a Logging entry and checked against the whole filter, so the push-down only
//! ever narrows what is read, never what matches.
//!
//! Pages are cursors on the store's ids. One call reads at most [`MAX_ROWS_PER_CALL`] rows; a
//! query that finds fewer matches than asked in that budget returns what it has and a
//! `next_page_token` to go on from (as Cloud Logging does for long searches).

use serde_json::Value;
use wharf_runtime::logs::{LogFilter, LogStore, OwnerKind};

use crate::entry::{Origin, render};
use crate::filter::{Comparison, Expr, Filter, Op, severity_rank};

/// Rows read from the store per batch.
const BATCH: usize = 1000;
/// Rows one call may read before it returns with a page token.
pub const MAX_ROWS_PER_CALL: usize = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

#[derive(Debug)]
pub struct Page {
    pub entries: Vec<Value>,
    /// Where the next call goes on from, when the search is not finished.
    pub next_page_token: Option<String>,
    /// Rows read to answer this call (for the benchmark and logs).
    pub rows_read: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("pageToken '{0}' is not one this server returned; drop it to start from the beginning")]
    BadPageToken(String),
    #[error("reading the log store failed")]
    Store(#[from] wharf_store::StoreError),
}

/// The store-side narrowing of `filter`; `None` when the filter can match nothing at all
/// (e.g. a resource type Wharf never writes).
pub fn push_down(filter: &Filter) -> Option<LogFilter> {
    let mut store = LogFilter::default();
    for term in &filter.terms {
        let Expr::Compare(c) = term else { continue };
        if !narrow(&mut store, c) {
            return None;
        }
    }
    Some(store)
}

/// Applies one conjunct to the store filter; false when it matches nothing.
fn narrow(store: &mut LogFilter, c: &Comparison) -> bool {
    let path: Vec<&str> = c.path.iter().map(String::as_str).collect();
    let value = c.value.clone();
    match (path.as_slice(), c.op) {
        (["resource", "labels", "service_name" | "configuration_name"], Op::Eq) => {
            store.service.get_or_insert(value);
        }
        (["resource", "labels", "revision_name"], Op::Eq) => {
            store.revision.get_or_insert(value);
        }
        (["resource", "labels", "job_name"], Op::Eq) => {
            store.job.get_or_insert(value);
        }
        (["labels", "run.googleapis.com/execution_name"], Op::Eq) => {
            store.execution.get_or_insert(value);
        }
        (["labels", "instanceId"], Op::Eq) => {
            store.instance.get_or_insert(value);
        }
        (["resource", "type"], Op::Eq) => match value.as_str() {
            "cloud_run_revision" => store.kind = Some(OwnerKind::Service),
            "cloud_run_job" => store.kind = Some(OwnerKind::Job),
            _ => return false,
        },
        (["severity"], op) => {
            let Some(rank) = severity_rank(&value).or_else(|| value.parse().ok()) else { return true };
            let (min, max) = match op {
                Op::Eq => (Some(rank), Some(rank)),
                Op::Ge => (Some(rank), None),
                Op::Gt => (Some(rank + 1), None),
                Op::Le => (None, Some(rank)),
                Op::Lt => (None, Some(rank - 1)),
                _ => (None, None),
            };
            if let Some(min) = min {
                store.min_severity = Some(store.min_severity.map_or(min, |m| m.max(min)));
            }
            if let Some(max) = max {
                store.max_severity = Some(store.max_severity.map_or(max, |m| m.min(max)));
            }
        }
        (["timestamp"], op) => {
            let Ok(at) = value.parse::<jiff::Timestamp>() else { return true };
            let micros = at.as_microsecond();
            let (since, until) = match op {
                Op::Ge => (Some(micros), None),
                Op::Gt => (Some(micros + 1), None),
                Op::Le => (None, Some(micros)),
                Op::Lt => (None, Some(micros - 1)),
                Op::Eq => (Some(micros), Some(micros)),
                _ => (None, None),
            };
            if let Some(since) = since {
                store.since_us = Some(store.since_us.map_or(since, |s| s.max(since)));
            }
            if let Some(until) = until {
                store.until_us = Some(store.until_us.map_or(until, |u| u.min(until)));
            }
        }
        // SQLite's LIKE folds ASCII case only, so only ASCII text narrows safely.
        (["textPayload"], Op::Has) if value != "*" && value.is_ascii() => {
            store.message_contains.get_or_insert(value);
        }
        _ => {}
    }
    true
}

/// Runs `filter` over the store: up to `limit` matching entries in `order`, continuing after
/// `page_token` when given.
pub async fn run(
    store: &LogStore,
    filter: &Filter,
    origin: &Origin,
    order: Order,
    limit: usize,
    page_token: Option<&str>,
) -> Result<Page, QueryError> {
    let mut cursor = match page_token {
        None | Some("") => None,
        Some(token) => Some(token.parse::<i64>().map_err(|_| QueryError::BadPageToken(token.to_owned()))?),
    };
    let limit = limit.max(1);
    let mut page = Page { entries: Vec::new(), next_page_token: None, rows_read: 0 };
    let Some(mut narrowed) = push_down(filter) else { return Ok(page) };
    narrowed.limit = BATCH;
    narrowed.oldest_first = order == Order::OldestFirst;
    loop {
        match order {
            Order::NewestFirst => narrowed.before_id = cursor,
            Order::OldestFirst => narrowed.after_id = cursor,
        }
        let mut rows = store.query(&narrowed).await?;
        if order == Order::NewestFirst {
            // The store returns a batch oldest first; walk it newest first.
            rows.reverse();
        }
        let exhausted = rows.len() < BATCH;
        for (i, row) in rows.iter().enumerate() {
            page.rows_read += 1;
            cursor = Some(row.id);
            let entry = render(row, origin);
            if filter.matches(&entry) {
                page.entries.push(entry);
                if page.entries.len() == limit {
                    let more = !exhausted || i + 1 < rows.len();
                    page.next_page_token = more.then(|| row.id.to_string());
                    return Ok(page);
                }
            }
        }
        if exhausted {
            return Ok(page);
        }
        if page.rows_read >= MAX_ROWS_PER_CALL {
            page.next_page_token = cursor.map(|c| c.to_string());
            return Ok(page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexable_conjuncts_are_pushed_down_and_the_rest_is_left_to_the_filter() {
        let f = Filter::parse(
            r#"resource.type=cloud_run_revision resource.labels.service_name=api severity>=WARNING severity<ERROR
               timestamp>="2026-11-24T10:00:00Z" textPayload:timeout jsonPayload.user=ann"#,
        )
        .unwrap();
        let s = push_down(&f).unwrap();
        assert_eq!(s.kind, Some(OwnerKind::Service));
        assert_eq!(s.service.as_deref(), Some("api"));
        assert_eq!((s.min_severity, s.max_severity), (Some(400), Some(499)));
        assert_eq!(s.since_us, Some(1_795_514_400_000_000));
        assert_eq!(s.message_contains.as_deref(), Some("timeout"));
        // Under OR or NOT nothing is pushed: the store would lose matches.
        let s = push_down(&Filter::parse("resource.labels.service_name=api OR severity>=ERROR").unwrap()).unwrap();
        assert_eq!((s.service, s.min_severity), (None, None));
        let s = push_down(&Filter::parse("NOT resource.labels.service_name=api").unwrap()).unwrap();
        assert_eq!(s.service, None);
        assert!(push_down(&Filter::parse("resource.type=gce_instance").unwrap()).is_none());
    }
}
