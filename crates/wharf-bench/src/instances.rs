//! Rows of `wharf-bench all` about many instances, on the server `system::run` started:
//!
//! - `memory per` idle instance: Wharf's own share (the server's growth plus its helper
//!   processes: the instance supervisor and any shim), as PSS (`/proc/PID/smaps_rollup`, so
//!   pages the helpers share with the server count once), over a few instances;
//! - `N instances` of the testapp started and each answering one request (directly at its
//!   address, so the row measures starting, not the proxy), with the total memory they take:
//!   the instances' own cgroups plus Wharf's PSS growth.
//!
//! `wharf-bench instances [--count N] [--smoke] [--wharf PATH]` runs these rows alone on a
//! server of their own (`--wharf` measures another build of the server, e.g. the one before a
//! change).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use wharf_testsupport::WharfServer;

use crate::system::{Row, cli, wait_for};

/// Proportional set size of process `pid`, in KiB (0 if it is gone).
pub(crate) fn pss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0.0)
}

/// The helper processes of `server` (the instance supervisor, shims, and the per-instance
/// waiters of builds before the supervisor).
pub(crate) fn helper_pids(server: &WharfServer) -> Vec<u32> {
    let dir = server.data_dir().to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let helper = [" supervise ", " shim --id ", " shim-wait --pid "].iter().any(|h| cmdline.contains(h));
            (helper && cmdline.contains(&dir)).then_some(pid)
        })
        .collect()
}

/// Wharf's own memory: the server's PSS plus its helpers', in KiB, and how many helpers.
pub(crate) fn wharf_pss_kib(server: &WharfServer) -> (f64, usize) {
    let (helpers, count) = helpers_pss_kib(server);
    (pss_kib(server.addrs.pid) + helpers, count)
}

/// The helper processes' PSS alone, in KiB, and how many there are.
fn helpers_pss_kib(server: &WharfServer) -> (f64, usize) {
    let helpers = helper_pids(server);
    (helpers.iter().map(|p| pss_kib(*p)).sum(), helpers.len())
}

/// Ids and addresses (`ip:8080`) of `service`'s instances that have a running container.
fn instances_of(server: &WharfServer, service: &str) -> Vec<(String, String)> {
    let Ok(dirs) = std::fs::read_dir(server.data_dir().join("instances")) else { return Vec::new() };
    dirs.flatten()
        .filter_map(|d| {
            let dir = d.path();
            let spec = std::fs::read_to_string(dir.join("scratch/bundle/config.json")).ok()?;
            if !spec.contains(&format!("K_SERVICE={service}\"")) {
                return None;
            }
            let ip = crate::system::instance_ip(&dir)?;
            Some((d.file_name().to_string_lossy().into_owned(), format!("{ip}:8080")))
        })
        .collect()
}

/// Memory charged to instance `id`'s cgroup (v1 `memory.usage_in_bytes` or v2
/// `memory.current`), in bytes.
fn instance_memory_bytes(id: &str) -> f64 {
    let v1 = Path::new("/sys/fs/cgroup/memory/wharf").join(format!("wharf-{id}")).join("memory.usage_in_bytes");
    let v2 = Path::new("/sys/fs/cgroup/wharf").join(format!("wharf-{id}")).join("memory.current");
    [v1, v2].iter().find_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok()).unwrap_or(0.0)
}

/// The memory-per-idle-instance row: `n` min instances of a fresh service.
pub async fn memory_row(server: &WharfServer, image_ref: &str, n: usize) -> anyhow::Result<Row> {
    let (before, _) = wharf_pss_kib(server);
    cli(
        server,
        &["run", "deploy", "mem", "--image", image_ref, "--project", "bench", "--min-instances", &n.to_string()],
    )?;
    wait_for("min instances", Duration::from_secs(120), || instances_of(server, "mem").len() >= n)?;
    // Let the starts' transient allocations settle (the pool's idle instances are frozen).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, helpers) = wharf_pss_kib(server);
    let (helpers_kib, _) = helpers_pss_kib(server);
    cli(server, &["run", "services", "delete", "mem", "--project", "bench", "--quiet"])?;
    wait_for("the mem instances to stop", Duration::from_secs(60), || instances_of(server, "mem").is_empty())?;
    Ok(Row {
        metric: format!(
            "Wharf memory per idle instance (server growth + {helpers} helper processes of {:.2} MiB, PSS, {n} instances)",
            helpers_kib / 1024.0
        ),
        wharf: (after - before) / (n as f64) / 1024.0,
        baseline: None,
        baseline_name: "(target: 2 MiB)".into(),
        unit: "MiB",
        higher_is_better: false,
    })
}

/// The `N instances` rows: a service with `count` min instances (CPU always on, so each can
/// be reached directly), timed from the deploy until every instance answered one GET.
pub async fn many_rows(server: &WharfServer, image_ref: &str, count: usize) -> anyhow::Result<Vec<Row>> {
    let (before, _) = wharf_pss_kib(server);
    let n = count.to_string();
    let t = Instant::now();
    let deployed = cli(
        server,
        &[
            "run",
            "deploy",
            "many",
            "--image",
            image_ref,
            "--project",
            "bench",
            "--min-instances",
            &n,
            "--max-instances",
            &n,
            "--memory",
            "128Mi",
            "--no-cpu-throttling",
        ],
    );
    let result = async {
        deployed?;
        let deploy_returned = t.elapsed();
        let client = wharf_testsupport::http_client().timeout(Duration::from_secs(5)).build()?;
        let mut answered = std::collections::HashSet::new();
        let (mut tenth, mut nine_tenths) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(300);
        while answered.len() < count {
            if Instant::now() > deadline {
                bail!("only {} of {count} instances answered within 300 s", answered.len());
            }
            let waiting: Vec<(String, String)> =
                instances_of(server, "many").into_iter().filter(|(id, _)| !answered.contains(id)).collect();
            let results: Vec<Option<String>> = futures::stream::iter(waiting)
                .map(|(id, addr)| {
                    let client = client.clone();
                    async move {
                        let ok = client.get(format!("http://{addr}/")).send().await.is_ok_and(|r| r.status().is_success());
                        ok.then_some(id)
                    }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            answered.extend(results.into_iter().flatten());
            if tenth.is_none() && answered.len() * 10 >= count {
                tenth = Some(t.elapsed());
            }
            if nine_tenths.is_none() && answered.len() * 10 >= count * 9 {
                nine_tenths = Some(t.elapsed());
            }
            if answered.len() < count {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let all_answered = t.elapsed();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_or(0, |m| m.lines().count());
        let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
        let (after, helpers) = wharf_pss_kib(server);
        let instances = instances_of(server, "many");
        let cgroups: f64 = instances.iter().map(|(id, _)| instance_memory_bytes(id)).sum::<f64>() / 1048576.0;
        let wharf = (after - before) / 1024.0;
        Ok(vec![
            Row {
                metric: format!(
                    "{count} instances started and each answering once (deploy returned after {:.2} s; \
                     10% answered at {:.2} s, 90% at {:.2} s; {mounts} host mounts at the end)",
                    deploy_returned.as_secs_f64(),
                    secs(tenth),
                    secs(nine_tenths),
                ),
                wharf: all_answered.as_secs_f64(),
                baseline: None,
                baseline_name: "(target: 10 s)".into(),
                unit: "s",
                higher_is_better: false,
            },
            Row {
                metric: format!(
                    "{count} instances: total memory (instances' cgroups {cgroups:.0} MiB + Wharf's PSS growth {wharf:.0} MiB, {helpers} helpers)"
                ),
                wharf: cgroups + wharf,
                baseline: None,
                baseline_name: format!("{:.2} MiB per instance", (cgroups + wharf) / count as f64),
                unit: "MiB",
                higher_is_better: false,
            },
        ])
    }
    .await;
    // Whatever happened, the instances go (the server's drop stops the rest).
    let _ = cli(server, &["run", "services", "delete", "many", "--project", "bench", "--quiet"]);
    let _ =
        wait_for("the many instances to stop", Duration::from_secs(300), || instances_of(server, "many").is_empty());
    result
}

/// The server-wide instance memory limit these rows need: `count` instances of 128 MiB (the
/// smallest Cloud Run allows) are admitted, though each uses a few MiB.
pub fn memory_limit_for(count: usize) -> String {
    format!("{}Mi", (count + 64) * 128)
}

/// `wharf-bench instances`: these rows alone, on a server of their own.
pub async fn run(count: usize, smoke: bool, wharf: Option<PathBuf>) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("wharf-bench-").tempdir()?;
    let image = wharf_testsupport::testapp_image(work.path(), "bench")?;
    let binary = match wharf {
        Some(path) => path,
        None => crate::system::wharf_binary()?,
    };
    let limit = memory_limit_for(count);
    let server = WharfServer::start_with_env(
        &binary,
        &[("WHARF_IDLE_TIMEOUT", "1s"), ("WHARF_LOG", "warn"), ("WHARF_INSTANCE_MEMORY_LIMIT", &limit)],
    )
    .with_context(|| format!("starting {}", binary.display()))?;
    cli(&server, &["images", "import", &image.layout.to_string_lossy(), "--tag", "bench:v1"])?;
    let image_ref = format!("{}/bench:v1", server.addrs.registry_addr);
    let mut rows = vec![memory_row(&server, &image_ref, if smoke { 2 } else { 10 }).await?];
    rows.extend(many_rows(&server, &image_ref, count).await?);
    crate::system::print_table(&rows);
    Ok(())
}
