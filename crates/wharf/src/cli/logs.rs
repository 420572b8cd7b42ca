//! `wharf logs read|tail`: instance logs of a service, revision, job or execution, newest
//! last, filtered by severity; `--audit`: the admin audit log.

use std::time::Duration;

use super::{Client, ConnectionArgs, check};

#[derive(Debug, Clone, clap::Args)]
pub struct LogFilterArgs {
    /// The service whose logs to show (same as --service).
    pub name: Option<String>,
    #[arg(long)]
    pub service: Option<String>,
    #[arg(long)]
    pub revision: Option<String>,
    #[arg(long)]
    pub job: Option<String>,
    #[arg(long)]
    pub execution: Option<String>,
    /// Only entries at or above this severity (DEBUG, INFO, WARNING, ERROR, ...).
    #[arg(long)]
    pub severity: Option<String>,
    /// At most this many entries (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Show the admin audit log (who called which API method, allowed or denied).
    #[arg(long)]
    pub audit: bool,
    /// Output format: text (default) or json.
    #[arg(long, default_value = "text")]
    pub format: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum LogsCommand {
    /// Print stored log entries.
    Read(LogFilterArgs),
    /// Print new log entries as they arrive, until interrupted.
    Tail(LogFilterArgs),
}

pub async fn run(connection: &ConnectionArgs, command: LogsCommand) -> anyhow::Result<()> {
    let client = Client::connect(connection)?;
    match command {
        LogsCommand::Read(filter) => {
            let entries = fetch(&client, &filter, None).await?;
            print(&entries, &filter.format)
        }
        LogsCommand::Tail(filter) => {
            let mut after = fetch(&client, &filter, None).await?.iter().filter_map(|e| e["id"].as_i64()).max();
            loop {
                let entries = fetch(&client, &filter, after).await?;
                if let Some(max) = entries.iter().filter_map(|e| e["id"].as_i64()).max() {
                    after = Some(max);
                }
                print(&entries, &filter.format)?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn fetch(client: &Client, f: &LogFilterArgs, after: Option<i64>) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut query: Vec<(&str, String)> = vec![("limit", f.limit.to_string())];
    let service = f.service.clone().or_else(|| f.name.clone());
    for (key, value) in [
        ("service", service),
        ("revision", f.revision.clone()),
        ("job", f.job.clone()),
        ("execution", f.execution.clone()),
        ("severity", f.severity.clone()),
        ("afterId", after.map(|a| a.to_string())),
        ("audit", f.audit.then(|| "true".to_owned())),
    ] {
        if let Some(v) = value {
            query.push((key, v));
        }
    }
    let response = client.api_request(reqwest::Method::GET, "/wharf/v1/logs").query(&query).send().await?;
    let body: serde_json::Value = check(response).await?.json().await?;
    Ok(body["entries"].as_array().cloned().unwrap_or_default())
}

/// An entry's `timestampUs` as RFC 3339 in UTC with microseconds, as the API's times read.
fn timestamp(micros: i64) -> String {
    format!("{:.6}", jiff::Timestamp::from_microsecond(micros).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

fn print(entries: &[serde_json::Value], format: &str) -> anyhow::Result<()> {
    for e in entries {
        if format == "json" {
            println!("{e}");
            continue;
        }
        let time = timestamp(e["timestampUs"].as_i64().unwrap_or(0));
        let source = e["revision"].as_str().or_else(|| e["execution"].as_str()).unwrap_or("");
        println!("{time} {:<8} {source} {}", e["severity"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or(""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_rfc3339_micros() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(1_795_369_539_123_456), "2026-11-22T17:45:39.123456Z");
    }
}
