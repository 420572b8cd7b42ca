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

/// Rows read from the store per batch, at most: batches start at a few times the rows asked
/// for and double while the filter keeps rejecting rows.
const BATCH: usize = 4096;
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

/// The store-side narrowing of `filter`, and whether it is exact (every conjunct translated
/// as is, so rows need no check against the filter); `None` when the filter can match
/// nothing at all (e.g. a resource type Wharf never writes).
pub fn push_down(filter: &Filter) -> Option<(LogFilter, bool)> {
    let mut store = LogFilter::default();
    let mut exact = true;
    for term in &filter.terms {
        let Expr::Compare(c) = term else {
            exact = false;
            continue;
        };
        match narrow(&mut store, c) {
            Narrowed::Exactly => {}
            Narrowed::Partly => exact = false,
            Narrowed::ToNothing => return None,
        }
    }
    Some((store, exact))
}

/// What one conjunct did to the store filter.
enum Narrowed {
    /// The store now selects exactly the rows the conjunct accepts.
    Exactly,
    /// The store selects at least those rows (maybe more, maybe all).
    Partly,
    /// No row can match.
    ToNothing,
}

/// Sets an equality slot: exact when it was empty or already held the same value.
fn equal(slot: &mut Option<String>, value: String) -> Narrowed {
    match slot {
        None => {
            *slot = Some(value);
            Narrowed::Exactly
        }
        Some(held) if *held == value => Narrowed::Exactly,
        Some(_) => Narrowed::Partly,
    }
}

/// Applies one conjunct to the store filter.
fn narrow(store: &mut LogFilter, c: &Comparison) -> Narrowed {
    let path: Vec<&str> = c.path.iter().map(String::as_str).collect();
    let value = c.value.clone();
    match (path.as_slice(), c.op) {
        // A job line has no service label; `service_name=""` is left to the filter.
        (["resource", "labels", "service_name" | "configuration_name"], Op::Eq) if !value.is_empty() => {
            equal(&mut store.service, value)
        }
        (["resource", "labels", "revision_name"], Op::Eq) if !value.is_empty() => equal(&mut store.revision, value),
        (["resource", "labels", "job_name"], Op::Eq) => equal(&mut store.job, value),
        (["labels", "run.googleapis.com/execution_name"], Op::Eq) => equal(&mut store.execution, value),
        (["labels", "instanceId"], Op::Eq) => equal(&mut store.instance, value),
        (["resource", "type"], Op::Eq) => {
            let kind = match value.as_str() {
                "cloud_run_revision" => OwnerKind::Service,
                "cloud_run_job" => OwnerKind::Job,
                _ => return Narrowed::ToNothing,
            };
            if store.kind.is_some_and(|k| k != kind) {
                return Narrowed::ToNothing;
            }
            store.kind = Some(kind);
            Narrowed::Exactly
        }
        (["severity"], op) => {
            let Some(rank) = severity_rank(&value).or_else(|| value.parse().ok()) else { return Narrowed::Partly };
            let (min, max) = match op {
                Op::Eq => (Some(rank), Some(rank)),
                Op::Ge => (Some(rank), None),
                Op::Gt => (Some(rank + 1), None),
                Op::Le => (None, Some(rank)),
                Op::Lt => (None, Some(rank - 1)),
                _ => return Narrowed::Partly,
            };
            if let Some(min) = min {
                store.min_severity = Some(store.min_severity.map_or(min, |m| m.max(min)));
            }
            if let Some(max) = max {
                store.max_severity = Some(store.max_severity.map_or(max, |m| m.min(max)));
            }
            Narrowed::Exactly
        }
        (["timestamp"], op) => {
            let Ok(at) = value.parse::<jiff::Timestamp>() else { return Narrowed::Partly };
            let micros = at.as_microsecond();
            let (since, until) = match op {
                Op::Ge => (Some(micros), None),
                Op::Gt => (Some(micros + 1), None),
                Op::Le => (None, Some(micros)),
                Op::Lt => (None, Some(micros - 1)),
                Op::Eq => (Some(micros), Some(micros)),
                _ => return Narrowed::Partly,
            };
            if let Some(since) = since {
                store.since_us = Some(store.since_us.map_or(since, |s| s.max(since)));
            }
            if let Some(until) = until {
                store.until_us = Some(store.until_us.map_or(until, |u| u.min(until)));
            }
            Narrowed::Exactly
        }
        // The store's message column holds a text line, or a structured line's `message`
        // (its JSON text when not a string). SQLite's LIKE folds ASCII case only, and JSON
        // text escapes quotes and backslashes, so only plain ASCII text narrows safely.
        (["textPayload"] | ["jsonPayload", "message"], Op::Has) if plain_ascii(&value) => {
            store.message_contains.get_or_insert(value);
            Narrowed::Partly
        }
        _ => Narrowed::Partly,
    }
}

fn plain_ascii(text: &str) -> bool {
    text != "*"
        && !text.is_empty()
        && text.chars().all(|c| c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\')
}

/// Runs `filter` over the store's entries of `origin.project`: up to `limit` matching entries
/// in `order`, continuing after `page_token` when given.
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
    let Some((mut narrowed, exact)) = push_down(filter) else { return Ok(page) };
    let mut batch = (limit * 4).clamp(64, BATCH);
    // Only the project's own entries, whatever the filter says.
    narrowed.project = Some(origin.project.clone());
    narrowed.oldest_first = order == Order::OldestFirst;
    loop {
        match order {
            Order::NewestFirst => narrowed.before_id = cursor,
            Order::OldestFirst => narrowed.after_id = cursor,
        }
        narrowed.limit = batch;
        let mut rows = store.query(&narrowed).await?;
        if order == Order::NewestFirst {
            // The store returns a batch oldest first; walk it newest first.
            rows.reverse();
        }
        let exhausted = rows.len() < batch;
        batch = (batch * 2).min(BATCH);
        for (i, row) in rows.iter().enumerate() {
            page.rows_read += 1;
            cursor = Some(row.id);
            let entry = render(row, origin);
            if exact || filter.matches(&entry) {
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
        let (s, exact) = push_down(&f).unwrap();
        assert!(!exact, "textPayload and jsonPayload are checked row by row");
        assert_eq!(s.kind, Some(OwnerKind::Service));
        assert_eq!(s.service.as_deref(), Some("api"));
        assert_eq!((s.min_severity, s.max_severity), (Some(400), Some(499)));
        assert_eq!(s.since_us, Some(1_795_514_400_000_000));
        assert_eq!(s.message_contains.as_deref(), Some("timeout"));
        let (s, _) = push_down(&Filter::parse(r#"jsonPayload.message:"a\"b""#).unwrap()).unwrap();
        assert_eq!(s.message_contains, None, "a quote is escaped in stored JSON text");
        // Under OR or NOT nothing is pushed: the store would lose matches.
        let (s, exact) =
            push_down(&Filter::parse("resource.labels.service_name=api OR severity>=ERROR").unwrap()).unwrap();
        assert_eq!((s.service, s.min_severity, exact), (None, None, false));
        let (s, exact) = push_down(&Filter::parse("NOT resource.labels.service_name=api").unwrap()).unwrap();
        assert_eq!((s.service, exact), (None, false));
        assert!(push_down(&Filter::parse("resource.type=gce_instance").unwrap()).is_none());
        assert!(
            push_down(&Filter::parse("resource.type=cloud_run_job resource.type=cloud_run_revision").unwrap())
                .is_none()
        );
        // Indexed equalities and ranges translate exactly: rows need no second look.
        let (_, exact) = push_down(
            &Filter::parse(r#"resource.labels.service_name=api severity>=ERROR timestamp<"2026-01-01T00:00:00Z""#)
                .unwrap(),
        )
        .unwrap();
        assert!(exact);
        let (s, exact) =
            push_down(&Filter::parse("resource.labels.service_name=api resource.labels.service_name=web").unwrap())
                .unwrap();
        assert_eq!((s.service.as_deref(), exact), (Some("api"), false));
    }
}
