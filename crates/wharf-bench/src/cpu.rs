//! The CPU allocation rows of `wharf-bench all`, on the server `system::run` started:
//!
//! - `idle instance cpu`: CPU time per minute (in ms) an idle instance's cgroup uses with the
//!   default throttling (frozen between requests) while the test app's background loop
//!   (`/spin/start`) would count, against the same app with `--no-cpu-throttling`;
//! - `thaw`: time to the first response byte from an idle, frozen instance (p50, p99), against
//!   a warm instance that is never frozen, requested right after it in the same trial.
//!
//! `wharf-bench cpu [--smoke]` runs these rows alone on a server of their own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use wharf_testsupport::{WharfServer, service_host};

use crate::system::{Row, cli, percentile};

/// The directory of instance `id`'s cgroup in v1 `hierarchy`, or its v2 directory.
fn cgroup_dir(hierarchy: &str, id: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup").join(hierarchy).join("wharf").join(format!("wharf-{id}"));
    if v1.is_dir() { v1 } else { Path::new("/sys/fs/cgroup/wharf").join(format!("wharf-{id}")) }
}

fn frozen(id: &str) -> bool {
    match std::fs::read_to_string(cgroup_dir("freezer", id).join("freezer.state")) {
        Ok(state) => state.trim() == "FROZEN",
        Err(_) => std::fs::read_to_string(cgroup_dir("", id).join("cgroup.events"))
            .is_ok_and(|e| e.lines().any(|l| l == "frozen 1")),
    }
}

/// CPU time instance `id` has used, in seconds.
fn cpu_seconds(id: &str) -> anyhow::Result<f64> {
    let v1 = cgroup_dir("cpuacct", id).join("cpuacct.usage");
    if let Ok(ns) = std::fs::read_to_string(&v1) {
        return Ok(ns.trim().parse::<f64>()? / 1e9);
    }
    let stat = std::fs::read_to_string(cgroup_dir("", id).join("cpu.stat"))
        .with_context(|| format!("no CPU accounting for instance {id}"))?;
    let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).context("cpu.stat without usage_usec")?;
    Ok(usec.trim().parse::<f64>()? / 1e6)
}

async fn until_frozen(id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !frozen(id) {
        if Instant::now() > deadline {
            bail!("instance {id} was not frozen 10 s after its last request");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// GET `path` of `service` through the ingress: the time to the response head, and the body.
async fn get(
    client: &reqwest::Client,
    server: &WharfServer,
    service: &str,
    path: &str,
) -> anyhow::Result<(f64, String)> {
    let t = Instant::now();
    let response = client
        .get(format!("http://{}{path}", server.addrs.ingress_addr))
        .header("Host", service_host(service, "bench"))
        .send()
        .await?;
    let first_byte = t.elapsed().as_secs_f64() * 1000.0;
    if !response.status().is_success() {
        bail!("GET {path} on {service} answered {}", response.status());
    }
    Ok((first_byte, response.text().await?))
}

/// `wharf-bench cpu`: these rows alone, on a server of their own.
pub async fn run(smoke: bool) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("wharf-bench-").tempdir()?;
    let (server, _image, image_ref) = crate::system::bench_server(work.path())?;
    let client = server.client_builder().timeout(Duration::from_secs(60)).build()?;
    let rows = rows(&server, &client, &image_ref, smoke).await?;
    crate::system::print_table(&rows);
    Ok(())
}

/// Deploys the rows' services, measures, and deletes them.
pub async fn rows(
    server: &WharfServer,
    client: &reqwest::Client,
    image: &str,
    smoke: bool,
) -> anyhow::Result<Vec<Row>> {
    let deploy = |name: &str, extra: &[&str]| -> anyhow::Result<()> {
        let mut args = vec!["run", "deploy", name, "--image", image, "--project", "bench", "--min-instances", "1"];
        args.extend(extra);
        cli(server, &args).map(drop)
    };
    deploy("frugal", &[])?;
    deploy("spinning", &["--no-cpu-throttling"])?;
    deploy("napper", &[])?;
    deploy("awake", &["--no-cpu-throttling"])?;
    let mut rows = Vec::new();

    // Idle CPU: both run the background loop; one is frozen once idle.
    let spin = |service: &'static str| async move {
        let (_, body) = get(client, server, service, "/spin/start").await?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        v["instance"].as_str().map(str::to_owned).context("no instance in /spin/start's answer")
    };
    let (frugal, spinning) = (spin("frugal").await?, spin("spinning").await?);
    until_frozen(&frugal).await?;
    let window = Duration::from_secs(if smoke { 2 } else { 20 });
    let (frugal_before, spinning_before, t) = (cpu_seconds(&frugal)?, cpu_seconds(&spinning)?, Instant::now());
    tokio::time::sleep(window).await;
    let minutes = t.elapsed().as_secs_f64() / 60.0;
    // In CPU milliseconds per minute, so the table's two decimals show the target (1 ms).
    let per_minute =
        |before: f64, id: &str| -> anyhow::Result<f64> { Ok((cpu_seconds(id)? - before) * 1000.0 / minutes) };
    rows.push(Row {
        metric: format!("idle instance cpu, background loop, default throttling ({} s window)", window.as_secs()),
        wharf: per_minute(frugal_before, &frugal)?,
        baseline: Some(per_minute(spinning_before, &spinning)?),
        baseline_name: "--no-cpu-throttling (target: 0, <= 1 ms/min)".into(),
        unit: "ms/min",
        higher_is_better: false,
    });
    // The loop keeps a core busy: stop it before the latency rows.
    cli(server, &["run", "services", "delete", "spinning", "--project", "bench", "--quiet"])?;
    cli(server, &["run", "services", "delete", "frugal", "--project", "bench", "--quiet"])?;

    // Thaw: each trial waits until the napper is frozen, then requests it, then the awake one.
    let trials = if smoke { 5 } else { 200 };
    let (_, body) = get(client, server, "napper", "/hostname").await?;
    let napper = body.trim().to_owned();
    get(client, server, "awake", "/").await?;
    let (mut thawed, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        until_frozen(&napper).await?;
        thawed.push(get(client, server, "napper", "/").await?.0);
        warm.push(get(client, server, "awake", "/").await?.0);
    }
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        rows.push(Row {
            metric: format!("thaw: first byte from an idle, frozen instance, {name} ({trials} trials)"),
            wharf: percentile(&thawed, p),
            baseline: Some(percentile(&warm, p)),
            baseline_name: "warm instance, never frozen (target: 1 / 5 ms)".into(),
            unit: "ms",
            higher_is_better: false,
        });
    }
    for service in ["napper", "awake"] {
        cli(server, &["run", "services", "delete", service, "--project", "bench", "--quiet"])?;
    }
    Ok(rows)
}
