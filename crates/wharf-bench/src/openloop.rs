//! Open-loop latency: requests sent at a fixed rate (not as fast as answers come back, which
//! is what wrk measures), so the figure is the latency a moderately loaded service sees and
//! not a saturation artefact. Each request's latency runs from when it was due, not from when
//! it was sent, so a stalled sender cannot hide a slow answer (coordinated omission). Run once
//! through Wharf's ingress and once straight at the instance, in the same process and the
//! same run: the difference is what Wharf adds.

use std::time::{Duration, Instant};

/// Where to send: a URL, and the Host header and bearer token to send with it (Wharf's
/// ingress needs both; the direct run needs neither).
pub struct Target<'a> {
    pub url: &'a str,
    pub host: Option<&'a str>,
    pub token: Option<&'a str>,
}

/// Sends `rate` requests per second for `duration` and returns each one's latency in ms,
/// sorted. Fails if any request fails: a latency figure over errors would mean nothing.
pub async fn latencies(target: &Target<'_>, rate: u32, duration: Duration) -> anyhow::Result<Vec<f64>> {
    let client = wharf_testsupport::http_client().pool_max_idle_per_host(256).build()?;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let count = usize::try_from(duration.as_millis() * u128::from(rate) / 1000)?;
    // Warm the connection pool and the instance so the first due requests do not pay for it.
    for _ in 0..20 {
        send(&client, target).await?;
    }
    let start = Instant::now();
    let mut requests = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + period * u32::try_from(i)?;
        tokio::time::sleep_until(due.into()).await;
        let (client, url, host, token) =
            (client.clone(), target.url.to_owned(), target.host.map(str::to_owned), target.token.map(str::to_owned));
        requests.push(tokio::spawn(async move {
            let target = Target { url: &url, host: host.as_deref(), token: token.as_deref() };
            send(&client, &target).await.map(|()| due.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for request in requests {
        latencies.push(request.await??);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

async fn send(client: &reqwest::Client, target: &Target<'_>) -> anyhow::Result<()> {
    let mut request = client.get(target.url);
    if let Some(host) = target.host {
        request = request.header("Host", host);
    }
    if let Some(token) = target.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    response.bytes().await?;
    anyhow::ensure!(status.is_success(), "{} answered {status}", target.url);
    Ok(())
}
