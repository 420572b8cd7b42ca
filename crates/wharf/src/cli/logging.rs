//! `wharf logging read FILTER`: log entries selected with Cloud Logging's query language, as
//! `gcloud logging read` prints them (newest first, YAML by default), through the admin API's
//! `entries:list`.

use super::{Client, ConnectionArgs, check};

#[derive(Debug, clap::Subcommand)]
pub enum LoggingCommand {
    /// Print log entries matching a Cloud Logging filter.
    Read(ReadArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// A Cloud Logging filter, e.g. 'resource.type=cloud_run_revision AND severity>=ERROR'.
    #[arg(default_value = "")]
    pub filter: String,
    /// At most this many entries.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Only entries newer than this (e.g. 30m, 1h, 2d); ignored when the filter names a
    /// timestamp, as gcloud does.
    #[arg(long, default_value = "1d")]
    pub freshness: String,
    /// Newest first (desc, the default) or oldest first (asc).
    #[arg(long, default_value = "desc")]
    pub order: String,
    /// yaml (default), json or text.
    #[arg(long, default_value = "yaml")]
    pub format: String,
    /// The project whose entries to read [default: from config, else "default"].
    #[arg(long, env = "CLOUDSDK_CORE_PROJECT")]
    pub project: Option<String>,
}

pub async fn run(connection: &ConnectionArgs, command: LoggingCommand) -> anyhow::Result<()> {
    let LoggingCommand::Read(args) = command;
    let order_by = match args.order.as_str() {
        "desc" => "timestamp desc",
        "asc" => "timestamp asc",
        other => anyhow::bail!("--order {other:?}: use asc or desc"),
    };
    if !matches!(args.format.as_str(), "yaml" | "json" | "text") {
        anyhow::bail!("--format {:?}: use yaml, json or text", args.format);
    }
    let filter = with_freshness(&args.filter, &args.freshness, jiff::Timestamp::now())?;
    let project = args.project.clone().or_else(|| super::cli_setting("project")).unwrap_or_else(|| "default".into());
    let client = Client::connect(connection)?;
    let mut entries: Vec<serde_json::Value> = Vec::new();
    let mut page_token = String::new();
    while entries.len() < args.limit {
        let body = serde_json::json!({
            "resourceNames": [format!("projects/{project}")],
            "filter": filter,
            "orderBy": order_by,
            "pageSize": (args.limit - entries.len()).min(1000),
            "pageToken": page_token,
        });
        let response = client.api_request(reqwest::Method::POST, "/v2/entries:list").json(&body).send().await?;
        let page: serde_json::Value = check(response).await?.json().await?;
        entries.extend(page["entries"].as_array().cloned().unwrap_or_default());
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => page_token = next.to_owned(),
            _ => break,
        }
    }
    entries.truncate(args.limit);
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&entries)?),
        "text" => {
            for e in &entries {
                let text = e["textPayload"].as_str().map(str::to_owned).unwrap_or_else(|| e["jsonPayload"].to_string());
                println!(
                    "{} {:<8} {}",
                    e["timestamp"].as_str().unwrap_or(""),
                    e["severity"].as_str().unwrap_or(""),
                    text
                );
            }
        }
        _ => {
            for e in &entries {
                print!("---\n{}", serde_norway::to_string(e)?);
            }
        }
    }
    Ok(())
}

/// Adds `timestamp>="NOW - freshness"` unless the filter already bounds the timestamp. No
/// parentheses are needed (AND binds loosest in this language), so the columns of errors
/// still count from the start of the user's filter.
fn with_freshness(filter: &str, freshness: &str, now: jiff::Timestamp) -> anyhow::Result<String> {
    if filter.contains("timestamp") {
        return Ok(filter.to_owned());
    }
    let seconds = parse_duration(freshness).ok_or_else(|| {
        anyhow::anyhow!("--freshness {freshness:?}: write a number and a unit, e.g. 30s, 10m, 1h, 2d")
    })?;
    let since = now
        .checked_sub(jiff::SignedDuration::from_secs(seconds))
        .map_err(|_| anyhow::anyhow!("--freshness {freshness:?} reaches before the epoch"))?;
    let bound = format!("timestamp>=\"{}\"", since.strftime("%Y-%m-%dT%H:%M:%SZ"));
    Ok(if filter.trim().is_empty() { bound } else { format!("{filter} AND {bound}") })
}

fn parse_duration(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    number.checked_mul(unit).filter(|s| *s < 100 * 365 * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_bounds_the_filter_unless_it_names_a_timestamp() {
        let now: jiff::Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        assert_eq!(with_freshness("", "1h", now).unwrap(), "timestamp>=\"2026-11-24T11:00:00Z\"");
        assert_eq!(
            with_freshness("severity>=ERROR", "1d", now).unwrap(),
            "severity>=ERROR AND timestamp>=\"2026-11-23T12:00:00Z\""
        );
        let bounded = "timestamp>=\"2026-01-01T00:00:00Z\"";
        assert_eq!(with_freshness(bounded, "1h", now).unwrap(), bounded);
        with_freshness("", "an hour", now).unwrap_err();
        with_freshness("", "99999999999d", now).unwrap_err();
    }
}
