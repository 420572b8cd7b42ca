//! The warm proxy rows: wrk at 64 connections through Wharf's ingress, straight to the
//! instance, and through nginx and HAProxy in front of the same instance
//! ([`crate::baselines`]), in alternating rounds (one run of each per round, so that a slow
//! stretch of the shared machine hits all of them), medians reported; and the latency each
//! proxy adds at a fixed moderate rate, open loop ([`crate::openloop`]).
//!
//! `wharf-bench proxy [--rounds 5] [--seconds 5]` runs these alone on a fresh server.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use wharf_testsupport::{WharfServer, service_host};

use crate::baselines::{ReverseProxy, thread_cpu_seconds};
use crate::system::{Row, cli, instance_address, percentile, which, wrk, wrk_with};

/// A warm service to measure: Wharf's ingress with the service's host and a token, and the
/// address of its one instance.
pub struct Warm<'a> {
    pub server: &'a WharfServer,
    pub host: String,
    pub direct: String,
}

impl Warm<'_> {
    fn ingress(&self) -> String {
        format!("http://{}/", self.server.addrs.ingress_addr)
    }
}

/// Deploys `service` with exactly one instance, always there, CPU always on (the direct and
/// baseline runs reach the instance without the router, which would find a throttled
/// instance frozen), waits for it to serve, and finds its address.
///
/// One instance at most: 64 connections are above the autoscaler's aim of 0.7 x 80
/// concurrent requests per instance, so Wharf would otherwise start a second instance during
/// its own rounds (twice the app's CPU against the baselines' one instance) and might stop the
/// first one afterwards, leaving the direct runs a dead address.
pub async fn deploy_warm<'a>(server: &'a WharfServer, image_ref: &str, service: &str) -> anyhow::Result<Warm<'a>> {
    cli(
        server,
        &[
            "run",
            "deploy",
            service,
            "--image",
            image_ref,
            "--project",
            "bench",
            "--min-instances",
            "1",
            "--max-instances",
            "1",
            "--no-cpu-throttling",
        ],
    )?;
    let host = service_host(service, "bench");
    let client = server.client_builder().timeout(Duration::from_secs(60)).build()?;
    let status =
        client.get(format!("http://{}/", server.addrs.ingress_addr)).header("Host", &host).send().await?.status();
    anyhow::ensure!(status.is_success(), "the warm service answered {status}");
    let direct = instance_address(server, service)?;
    Ok(Warm { server, host, direct })
}

/// Throughput, p50 and p99 at 64 connections: Wharf against the direct connection, nginx
/// and HAProxy, medians of `rounds` alternating rounds of `duration` each (wrk's syntax).
pub fn throughput_rows(warm: &Warm<'_>, dir: &Path, rounds: usize, duration: &str) -> anyhow::Result<Vec<Row>> {
    if !which("wrk") {
        eprintln!("wrk is not installed: skipping the proxy rows (apt-get install wrk nginx haproxy)");
        return Ok(Vec::new());
    }
    let mut runs: BTreeMap<&str, Vec<BTreeMap<&'static str, f64>>> = BTreeMap::new();
    for round in 0..rounds {
        let mut line = format!("round {}:", round + 1);
        let before = thread_cpu_seconds(warm.server.addrs.pid);
        let mut wharf = wrk(&warm.ingress(), Some((&warm.host, &warm.server.token)), duration)?;
        let after = thread_cpu_seconds(warm.server.addrs.pid);
        let requests = (wharf["rps"] * wharf["seconds"]).max(1.0);
        let spent =
            |part: &str| after.get(part).copied().unwrap_or_default() - before.get(part).copied().unwrap_or_default();
        let (ingress, rest) = (spent("ingress"), spent("rest"));
        wharf.insert("cpu_us_per_request", (ingress.total() + rest.total()) * 1e6 / requests);
        wharf.insert("kernel_cpu_us_per_request", (ingress.system + rest.system) * 1e6 / requests);
        eprintln!(
            "  wharf CPU a request: ingress threads {:.1} us ({:.1} in the kernel), the rest of the server {:.1} us",
            ingress.total() * 1e6 / requests,
            ingress.system * 1e6 / requests,
            rest.total() * 1e6 / requests,
        );
        let direct = wrk(&format!("http://{}/", warm.direct), None, duration)?;
        line += &format!(
            " wharf {:.0} ({:.1} us CPU a request), direct {:.0}",
            wharf["rps"], wharf["cpu_us_per_request"], direct["rps"]
        );
        runs.entry("wharf").or_default().push(wharf);
        runs.entry("direct").or_default().push(direct);
        for start in [ReverseProxy::nginx, ReverseProxy::haproxy] {
            match start(dir, &warm.direct).and_then(|proxy| Ok((proxy.name, proxy.wrk(duration)?))) {
                Ok((name, result)) => {
                    line += &format!(
                        ", {name} {:.0} ({:.1} us, {:.1} in the kernel)",
                        result["rps"], result["cpu_us_per_request"], result["kernel_cpu_us_per_request"]
                    );
                    runs.entry(name).or_default().push(result);
                }
                Err(error) => eprintln!("a baseline proxy failed, skipped: {error:#}"),
            }
        }
        eprintln!("{line} req/s");
    }
    let median = |name: &str, key: &str| -> Option<f64> {
        let values: Vec<f64> = runs.get(name)?.iter().map(|r| r[key]).collect();
        Some(percentile(&values, 0.5))
    };
    let mut rows = Vec::new();
    for (key, what) in [("cpu_us_per_request", "CPU time"), ("kernel_cpu_us_per_request", "kernel CPU time")] {
        let Some(wharf) = median("wharf", key) else { continue };
        for name in ["nginx", "haproxy"] {
            let Some(baseline) = median(name, key) else { continue };
            rows.push(Row {
                metric: format!("proxy {what} per request, 64 connections (vs {name})"),
                wharf,
                baseline: Some(baseline),
                baseline_name: format!("{name}'s processes, median of {rounds}; Wharf's whole server process"),
                unit: "us",
                higher_is_better: false,
            });
        }
    }
    for (metric, key, higher) in [
        ("proxy throughput, 64 connections", "rps", true),
        ("proxy latency p50", "p50_ms", false),
        ("proxy latency p99", "p99_ms", false),
    ] {
        let Some(wharf) = median("wharf", key) else { continue };
        for (name, baseline_name) in [
            ("direct", "direct to the instance"),
            ("nginx", "nginx reverse proxy"),
            ("haproxy", "haproxy reverse proxy"),
        ] {
            let Some(baseline) = median(name, key) else { continue };
            rows.push(Row {
                metric: if name == "direct" { metric.to_owned() } else { format!("{metric} (vs {name})") },
                wharf,
                baseline: Some(baseline),
                baseline_name: format!("{baseline_name}, median of {rounds}"),
                unit: if higher { "req/s" } else { "ms" },
                higher_is_better: higher,
            });
        }
    }
    Ok(rows)
}

/// The latency Wharf adds at `rate` requests per second (to each target) for `seconds`
/// (open loop), against
/// the direct connection, and the latency nginx adds for comparison: the three interleaved
/// in one run ([`crate::openloop`]).
pub async fn added_latency_rows(warm: &Warm<'_>, dir: &Path, rate: u32, seconds: u64) -> anyhow::Result<Vec<Row>> {
    use crate::openloop::{Target, latencies};
    let nginx = nginx_if_there(dir, &warm.direct);
    let mut targets = vec![
        Target { url: warm.ingress(), host: Some(warm.host.clone()), token: Some(warm.server.token.clone()) },
        Target { url: format!("http://{}/", warm.direct), host: None, token: None },
    ];
    if let Some(nginx) = &nginx {
        targets.push(Target { url: nginx.url(), host: None, token: None });
    }
    // Each target at `rate`: the machine sees `rate` times the number of targets.
    let total = rate * u32::try_from(targets.len()).unwrap_or(1);
    let measured = latencies(&targets, total, Duration::from_secs(seconds)).await?;
    drop(nginx);
    let mut rows = Vec::new();
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (wharf, direct) = (percentile(&measured[0], p), percentile(&measured[1], p));
        rows.push(Row {
            metric: format!("added latency {name} at {rate} req/s, open loop (through Wharf)"),
            wharf,
            baseline: Some(direct),
            baseline_name: format!(
                "direct to the instance, interleaved; Wharf adds {:.3} ms{}",
                wharf - direct,
                if name == "p50" { " (target: 0.1 ms)" } else { "" }
            ),
            unit: "ms",
            higher_is_better: false,
        });
        if let Some(nginx) = measured.get(2) {
            let nginx = percentile(nginx, p);
            rows.push(Row {
                metric: format!("added latency {name} at {rate} req/s, open loop (vs nginx)"),
                wharf,
                baseline: Some(nginx),
                baseline_name: format!("through nginx, interleaved; nginx adds {:.3} ms", nginx - direct),
                unit: "ms",
                higher_is_better: false,
            });
        }
    }
    Ok(rows)
}

/// Latency of one request at a time over one kept-alive connection (wrk, one connection),
/// through Wharf, straight to the instance and through nginx, in alternating rounds: the
/// latency each hop adds with no queueing and no client connection pool in the picture.
pub fn sequential_rows(warm: &Warm<'_>, dir: &Path, rounds: usize, duration: &str) -> anyhow::Result<Vec<Row>> {
    if !which("wrk") {
        return Ok(Vec::new());
    }
    let (mut wharf, mut direct, mut nginx) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        wharf.push(wrk_with(&warm.ingress(), Some((&warm.host, &warm.server.token)), duration, 1)?["p50_ms"]);
        direct.push(wrk_with(&format!("http://{}/", warm.direct), None, duration, 1)?["p50_ms"]);
        if let Some(proxy) = nginx_if_there(dir, &warm.direct) {
            nginx.push(wrk_with(&proxy.url(), None, duration, 1)?["p50_ms"]);
        }
    }
    let (wharf, direct) = (percentile(&wharf, 0.5), percentile(&direct, 0.5));
    let mut rows = vec![Row {
        metric: "added latency p50, one connection, one request at a time (through Wharf)".into(),
        wharf,
        baseline: Some(direct),
        baseline_name: format!("direct to the instance, median of {rounds}; Wharf adds {:.3} ms", wharf - direct),
        unit: "ms",
        higher_is_better: false,
    }];
    if !nginx.is_empty() {
        let nginx = percentile(&nginx, 0.5);
        rows.push(Row {
            metric: "added latency p50, one connection, one request at a time (vs nginx)".into(),
            wharf,
            baseline: Some(nginx),
            baseline_name: format!("through nginx, median of {rounds}; nginx adds {:.3} ms", nginx - direct),
            unit: "ms",
            higher_is_better: false,
        });
    }
    Ok(rows)
}

/// nginx in front of `upstream`, or `None` (said on stderr) when it is not installed or does
/// not start: the Wharf rows are still measured.
fn nginx_if_there(dir: &Path, upstream: &str) -> Option<ReverseProxy> {
    if !which("nginx") {
        return None;
    }
    ReverseProxy::nginx(dir, upstream).map_err(|error| eprintln!("nginx did not start, skipped: {error:#}")).ok()
}

/// `wharf-bench proxy`: a fresh server, one warm service, the rows above.
pub async fn run(rounds: usize, seconds: u64) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("wharf-bench-").tempdir()?;
    let (server, _image, image_ref) = crate::system::bench_server(work.path())?;
    let warm = deploy_warm(&server, &image_ref, "warm").await?;
    let mut rows = throughput_rows(&warm, work.path(), rounds, &format!("{seconds}s"))?;
    rows.extend(sequential_rows(&warm, work.path(), rounds, "3s")?);
    rows.extend(added_latency_rows(&warm, work.path(), 1000, 10).await?);
    rows.extend(crate::realapp::rows(&server, work.path(), rounds, &format!("{seconds}s")).await?);
    crate::system::print_table(&rows);
    Ok(())
}
