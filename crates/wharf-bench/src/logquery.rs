//! Log query rows: a log store filled with `entries` lines (20 services, every severity, a
//! day of timestamps, one line in 10,000 carrying a rare word), then Cloud Logging filters
//! answered through `wharf_logging::query` (what `entries:list` runs), each the median of
//! five runs. The baseline is SQLite reading every row of the same table once (`SELECT
//! COUNT(*) ... WHERE message LIKE`): what a query without the push-down would at least cost.

use std::time::Instant;

use wharf_logging::{Filter, Order, Origin};
use wharf_runtime::Owner;
use wharf_runtime::logs::{LogLimits, LogStore, Stream};
use wharf_store::Store;

use crate::system::Row;

const SERVICES: usize = 20;

pub async fn rows(entries: usize) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::Builder::new().prefix("wharf-bench-logs-").tempdir()?;
    let db = Store::open(&dir.path().join("state.db"))?;
    let limits = LogLimits { store_bytes: u64::MAX / 2, ..LogLimits::default() };
    let store = LogStore::open(db.clone(), i64::try_from(entries * 2)?, limits);
    let fill = Instant::now();
    let severities = ["DEBUG", "INFO", "INFO", "INFO", "NOTICE", "WARNING", "ERROR"];
    let owners: Vec<Owner> = (0..SERVICES)
        .map(|s| Owner::Service {
            service: format!("svc{s}"),
            revision: format!("svc{s}-00001-abc"),
            configuration: format!("svc{s}"),
        })
        .collect();
    for i in 0..entries {
        let severity = severities[i % severities.len()];
        let word = if i % 10_000 == 7 { "needle" } else { "hay" };
        let line = format!(r#"{{"severity":"{severity}","message":"request {i} {word}","code":{}}}"#, i % 1000);
        store.append(&owners[i % SERVICES], Some("bench"), "instance-1", Stream::Stdout, &line).await;
    }
    store.flush().await;
    eprintln!("filled the log store with {entries} entries in {:.1} s", fill.elapsed().as_secs_f64());

    let mut scans = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        db.read(|c| {
            c.query_row("SELECT COUNT(*) FROM logs WHERE message LIKE '%needle%'", [], |r| r.get::<_, i64>(0))
        })?;
        scans.push(start.elapsed());
    }
    let baseline = median_ms(scans);
    let origin = Origin { project: "bench".into(), ..Origin::default() };
    let queries = [
        ("one service's errors, newest 20", "resource.labels.service_name=svc3 AND severity>=ERROR"),
        ("a rare word in the message, newest 20", "jsonPayload.message:needle"),
        ("a field no index covers, newest 20", "jsonPayload.code=999"),
    ];
    let mut rows = Vec::new();
    for (name, filter) in queries {
        let filter = Filter::parse(filter)?;
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..RUNS {
            let start = Instant::now();
            let page = wharf_logging::query::run(&store, &filter, &origin, Order::NewestFirst, 20, None).await?;
            times.push(start.elapsed());
            found = page.entries.len();
        }
        rows.push(Row {
            metric: format!("log query over {entries} entries: {name} ({found} found)"),
            wharf: median_ms(times),
            baseline: Some(baseline),
            baseline_name: "SQLite scanning every row once".into(),
            unit: "ms",
            higher_is_better: false,
        });
    }
    Ok(rows)
}

const RUNS: usize = 5;

fn median_ms(mut times: Vec<std::time::Duration>) -> f64 {
    times.sort();
    times.get(times.len() / 2).map_or(f64::NAN, |t| t.as_secs_f64() * 1000.0)
}
