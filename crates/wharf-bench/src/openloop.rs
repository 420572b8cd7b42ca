//! Open-loop latency: requests sent at a fixed rate (not as fast as answers come back, which
//! is what wrk measures), so the figure is the latency a moderately loaded service sees and
//! not a saturation artefact. Each request's latency runs from when it was due, not from when
//! it was sent, so a stalled sender cannot hide a slow answer (coordinated omission).
//!
//! Several targets (through Wharf's ingress, straight at the instance, through nginx) are
//! measured in one run, their requests interleaved (one to each in turn), so that all of
//! them see the same machine: measured one after the other, a quieter or busier stretch of
//! this shared 2-core machine moved the medians by more than the difference being measured.

use std::time::{Duration, Instant};

/// Where to send: a URL, and the Host header and bearer token to send with it (Wharf's
/// ingress needs both; the direct run needs neither).
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub host: Option<String>,
    pub token: Option<String>,
}

/// Sends `rate` requests per second in all (to each target in turn) for `duration`, and
/// returns each target's latencies in ms, sorted. Fails if any request fails: a latency
/// figure over errors would mean nothing.
pub async fn latencies(targets: &[Target], rate: u32, duration: Duration) -> anyhow::Result<Vec<Vec<f64>>> {
    let client = wharf_testsupport::http_client().pool_max_idle_per_host(256).build()?;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let count = usize::try_from(duration.as_millis() * u128::from(rate) / 1000)?;
    // Warm the connection pools and the instance so the first due requests do not pay for it.
    for target in targets {
        for _ in 0..20 {
            send(&client, target).await?;
        }
    }
    let start = Instant::now();
    let mut requests = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + period * u32::try_from(i)?;
        tokio::time::sleep_until(due.into()).await;
        let (client, target) = (client.clone(), targets[i % targets.len()].clone());
        requests.push((
            i % targets.len(),
            tokio::spawn(async move { send(&client, &target).await.map(|()| due.elapsed().as_secs_f64() * 1000.0) }),
        ));
    }
    let mut latencies = vec![Vec::with_capacity(count / targets.len() + 1); targets.len()];
    for (target, request) in requests {
        latencies[target].push(request.await??);
    }
    for l in &mut latencies {
        l.sort_by(f64::total_cmp);
    }
    Ok(latencies)
}

async fn send(client: &reqwest::Client, target: &Target) -> anyhow::Result<()> {
    let mut request = client.get(&target.url);
    if let Some(host) = &target.host {
        request = request.header("Host", host);
    }
    if let Some(token) = &target.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    response.bytes().await?;
    anyhow::ensure!(status.is_success(), "{} answered {status}", target.url);
    Ok(())
}
