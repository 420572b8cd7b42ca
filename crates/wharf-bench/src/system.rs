//! `wharf-bench all`: whole-system figures from a real `wharf server` (started here on free
//! ports with a temporary data directory), each next to a baseline measured in the same run:
//!
//! 1. cold start of a service scaled to zero, to the first response byte, against `runc run`
//!    of the same rootfs until its port answers, and Wharf's own runtime start (no proxy);
//! 2. warm proxy throughput and latency at 64 connections (wrk) through the ingress, against
//!    the same instance reached directly and through nginx and HAProxy, and the latency added
//!    at a moderate fixed rate (`proxy.rs`); a Flask app on gunicorn through Wharf against
//!    direct (`realapp.rs`);
//! 3. `wharf run deploy` of a new revision (cached image) until its URL serves it;
//! 4. scale-out: 0 to 200 concurrent slow requests at concurrency 10;
//! 5. Wharf's memory (server growth and helper processes, PSS) per idle instance;
//! 6. CPU allocation: an idle instance's CPU use and the latency of thawing it (`cpu.rs`);
//! 7. 1,000 instances (20 in `--smoke`) started and each answering once, with their memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use wharf_testsupport::{WharfServer, service_host};

/// One row of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub wharf: f64,
    pub baseline: Option<f64>,
    pub baseline_name: String,
    pub unit: &'static str,
    /// Whether bigger is better (throughput) rather than smaller (latency).
    pub higher_is_better: bool,
}

pub struct Options {
    pub smoke: bool,
    pub out: PathBuf,
}

pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // an index into a short vector
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

pub(crate) fn wharf_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("wharf");
    if !path.exists() {
        bail!("{} is missing: build it first (cargo build --release -p wharf -p wharf-testapp)", path.display());
    }
    Ok(path)
}

/// A fresh server for one subcommand's rows (idle timeout 1 s) with the testapp image
/// imported as `bench:v1`; returns it, the image (which `work` holds) and its reference.
pub(crate) fn bench_server(work: &Path) -> anyhow::Result<(WharfServer, wharf_testsupport::TestImage, String)> {
    let image = wharf_testsupport::testapp_image(work, "bench")?;
    let server = WharfServer::start_with_env(&wharf_binary()?, &[("WHARF_IDLE_TIMEOUT", "1s"), ("WHARF_LOG", "warn")])?;
    cli(&server, &["images", "import", &image.layout.to_string_lossy(), "--tag", "bench:v1"])?;
    let image_ref = format!("{}/bench:v1", server.addrs.registry_addr);
    Ok((server, image, image_ref))
}

pub(crate) fn cli(server: &WharfServer, args: &[&str]) -> anyhow::Result<String> {
    let out = server.cli(args)?;
    if !out.status.success() {
        bail!("wharf {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An instance's OCI spec (empty when it has none yet or any more): its bundle lives on the
/// instance's in-memory scratch, `<instance dir>/scratch/bundle`.
fn instance_spec(instance_dir: &std::path::Path) -> String {
    std::fs::read_to_string(instance_dir.join("scratch/bundle/config.json")).unwrap_or_default()
}

/// Instances of `service` that exist (starting, ready or stopping).
pub(crate) fn instances(server: &WharfServer, service: &str) -> usize {
    let Ok(dirs) = std::fs::read_dir(server.data_dir().join("instances")) else { return 0 };
    dirs.flatten().filter(|d| instance_spec(&d.path()).contains(&format!("K_SERVICE={service}\""))).count()
}

pub(crate) fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Time to the response head of one GET.
async fn first_byte(client: &reqwest::Client, url: &str, host: Option<&str>) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut request = client.get(url);
    if let Some(h) = host {
        request = request.header("Host", h);
    }
    let response = request.send().await?;
    let elapsed = t.elapsed();
    if !response.status().is_success() {
        bail!("GET {url} answered {}", response.status());
    }
    response.bytes().await?;
    Ok(elapsed)
}

/// Cold starts of a service scaled to zero, to the first response byte through the ingress,
/// `trials` times, against `runc run` of the same rootfs in the same run: p50, p90 and p99.
async fn cold_rows(
    server: &WharfServer,
    (image, image_ref): (&wharf_testsupport::TestImage, &str),
    client: &reqwest::Client,
    trials: usize,
    dir: &Path,
) -> anyhow::Result<Vec<Row>> {
    let ingress = format!("http://{}/", server.addrs.ingress_addr);
    let host = &service_host("cold", "bench");
    cli(server, &["run", "deploy", "cold", "--image", image_ref, "--project", "bench"])?;
    let mut cold = Vec::new();
    for _ in 0..trials {
        wait_for("scale to zero", Duration::from_secs(30), || instances(server, "cold") == 0)?;
        cold.push(first_byte(client, &ingress, Some(host)).await?.as_secs_f64() * 1000.0);
    }
    let runc = runc_baseline(dir, image, trials).ok();
    Ok([(0.5, "p50"), (0.9, "p90"), (0.99, "p99")]
        .into_iter()
        .map(|(p, name)| Row {
            metric: format!("cold start to first byte, {name}"),
            wharf: percentile(&cold, p),
            baseline: runc.as_ref().map(|r| percentile(r, p)),
            baseline_name: "runc run until port answers".into(),
            unit: "ms",
            higher_is_better: false,
        })
        .collect())
}

/// `wharf-bench cold`: the cold start rows of `all` alone, on a fresh server.
pub async fn cold(trials: usize) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("wharf-bench-").tempdir()?;
    let (server, image, image_ref) = bench_server(work.path())?;
    let client = server.client_builder().timeout(Duration::from_secs(60)).build()?;
    print_table(&cold_rows(&server, (&image, &image_ref), &client, trials, work.path()).await?);
    Ok(())
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let trials = if options.smoke { 3 } else { 30 };
    let many = if options.smoke { 20 } else { 1000 };
    let work = tempfile::Builder::new().prefix("wharf-bench-").tempdir()?;
    let image = wharf_testsupport::testapp_image(work.path(), "bench")?;
    let server = WharfServer::start_with_env(
        &wharf_binary()?,
        &[
            ("WHARF_IDLE_TIMEOUT", "1s"),
            ("WHARF_LOG", "warn"),
            ("WHARF_HTTPS_ADDR", "127.0.0.1:0"),
            ("WHARF_INSTANCE_MEMORY_LIMIT", &crate::instances::memory_limit_for(many)),
        ],
    )?;
    cli(&server, &["images", "import", &image.layout.to_string_lossy(), "--tag", "bench:v1"])?;
    let image_ref = format!("{}/bench:v1", server.addrs.registry_addr);
    let ingress = format!("http://{}/", server.addrs.ingress_addr);
    // Services are private: the owner's token rides on every request, so the ingress rows
    // include the invoker check.
    let client = server.client_builder().timeout(Duration::from_secs(60)).build()?;
    let mut rows = Vec::new();

    // 5 (measured first, on the fresh server). Memory per idle instance (`instances.rs`).
    let memory_row = crate::instances::memory_row(&server, &image_ref, if options.smoke { 2 } else { 10 }).await?;

    // 1. Cold start.
    rows.extend(cold_rows(&server, (&image, &image_ref), &client, trials, work.path()).await?);

    // 2. Warm proxy (`proxy.rs`): throughput against the direct connection, nginx and HAProxy
    // in alternating rounds, and the latency added at a moderate fixed rate.
    let warm = crate::proxy::deploy_warm(&server, &image_ref, "warm").await?;
    let direct = warm.direct.clone();
    let (rounds, duration) = if options.smoke { (1, "1s") } else { (3, "5s") };
    rows.extend(crate::proxy::throughput_rows(&warm, work.path(), rounds, duration)?);
    rows.extend(crate::proxy::sequential_rows(&warm, work.path(), rounds, if options.smoke { "1s" } else { "3s" })?);
    let (rate, seconds) = if options.smoke { (200, 1) } else { (1000, 10) };
    rows.extend(crate::proxy::added_latency_rows(&warm, work.path(), rate, seconds).await?);
    rows.extend(crate::realapp::rows(&server, work.path(), rounds, duration).await?);
    if which("h2load") && which("nginx") {
        // A failed HTTPS run is reported and the other rows still measured (a release run
        // once saw 4 of 16 h2 connections fail; `wharf-bench protocols` is its closer look).
        match crate::protocols::tls_rows(&server, work.path(), &service_host("warm", "bench"), &direct, options.smoke) {
            Ok(tls) => rows.extend(tls),
            Err(error) if !options.smoke => eprintln!("the HTTPS rows failed, skipped: {error:#}"),
            Err(error) => return Err(error),
        }
    } else {
        eprintln!("h2load or nginx is not installed: skipping the HTTPS rows (apt-get install nghttp2-client nginx)");
    }

    // 3. Deploy to serving.
    let mut deploys = Vec::new();
    for i in 0..(if options.smoke { 1 } else { 5 }) {
        let t = Instant::now();
        cli(
            &server,
            &[
                "run",
                "deploy",
                "warm",
                "--image",
                &image_ref,
                "--project",
                "bench",
                "--update-env-vars",
                &format!("N={i}"),
            ],
        )?;
        let revision = cli(
            &server,
            &[
                "run",
                "services",
                "describe",
                "warm",
                "--project",
                "bench",
                "--format",
                "value(status.latestReadyRevisionName)",
            ],
        )?;
        loop {
            let body = client.get(&ingress).header("Host", service_host("warm", "bench")).send().await?.text().await?;
            if body.contains(revision.trim()) {
                break;
            }
        }
        deploys.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rows.push(Row {
        metric: "deploy a new revision until it serves".into(),
        wharf: percentile(&deploys, 0.5),
        baseline: None,
        baseline_name: "(target: 1000 ms)".into(),
        unit: "ms",
        higher_is_better: false,
    });

    // 4. Scale-out.
    let burst = if options.smoke { 40 } else { 200 };
    cli(
        &server,
        &[
            "run",
            "deploy",
            "burst",
            "--image",
            &image_ref,
            "--project",
            "bench",
            "--concurrency",
            "10",
            "--max-instances",
            "40",
        ],
    )?;
    wait_for("scale to zero", Duration::from_secs(30), || instances(&server, "burst") == 0)?;
    let t = Instant::now();
    let requests: Vec<_> = (0..burst)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{ingress}sleep?ms=2000"));
            tokio::spawn(async move {
                let r = client.get(url).header("Host", service_host("burst", "bench")).send().await;
                r.map(|r| r.status().is_success()).unwrap_or(false)
            })
        })
        .collect();
    let mut peak = 0;
    let watcher = {
        let dir = server.data_dir().join("instances");
        let others = instances(&server, "warm");
        std::thread::spawn(move || {
            let mut peak = 0;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                let now = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0).saturating_sub(others);
                peak = peak.max(now);
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let mut succeeded = 0;
    for r in requests {
        if r.await.unwrap_or(false) {
            succeeded += 1;
        }
    }
    let all_served = t.elapsed().as_secs_f64() * 1000.0 - 2000.0;
    peak = peak.max(watcher.join().unwrap_or(0));
    rows.push(Row {
        metric: format!(
            "scale-out 0 to {burst} requests (concurrency 10): until all served, {peak} instances, {succeeded} ok"
        ),
        wharf: all_served,
        baseline: None,
        baseline_name: "(target: 2000 ms to 20 instances)".into(),
        unit: "ms",
        higher_is_better: false,
    });

    // 6. CPU allocation: idle CPU and thaw latency (`cpu.rs`).
    rows.extend(crate::cpu::rows(&server, &client, &image_ref, options.smoke).await?);

    rows.push(memory_row);
    // 7. Many instances at once (`instances.rs`), last: it fills the machine.
    rows.extend(crate::instances::many_rows(&server, &image_ref, many).await?);
    rows.extend(crate::invoker::rows(if options.smoke { 2_000 } else { 100_000 })?);
    rows.extend(crate::logquery::rows(if options.smoke { 20_000 } else { 1_000_000 }).await?);
    print_table(&rows);
    write_json(&options.out, &rows, options.smoke)?;
    drop(server);
    Ok(())
}

pub(crate) fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The address of a running instance of `service`, read from its instance directory.
pub(crate) fn instance_address(server: &WharfServer, service: &str) -> anyhow::Result<String> {
    for entry in std::fs::read_dir(server.data_dir().join("instances"))? {
        let dir = entry?.path();
        let config = instance_spec(&dir);
        if !config.contains(&format!("K_SERVICE={service}\"")) {
            continue;
        }
        return instance_ip(&dir).map(|ip| format!("{ip}:8080")).context("no instance address");
    }
    bail!("no running instance of {service}")
}

/// The address of the instance whose directory is `dir`: the last line of the `hosts` file
/// Wharf wrote for it (on its scratch tmpfs).
pub(crate) fn instance_ip(dir: &Path) -> Option<String> {
    let hosts = std::fs::read_to_string(dir.join("scratch/hosts")).ok()?;
    Some(hosts.lines().last()?.split_whitespace().next()?.to_owned())
}

/// wrk at 64 connections (2 threads) for `duration`: requests per second, p50 and p99.
pub(crate) fn wrk(
    url: &str,
    host: Option<(&str, &str)>,
    duration: &str,
) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    wrk_with(url, host, duration, 64)
}

/// wrk with `connections` connections (at most 2 threads).
pub(crate) fn wrk_with(
    url: &str,
    host: Option<(&str, &str)>,
    duration: &str,
    connections: usize,
) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let mut cmd = Command::new("wrk");
    let threads = connections.clamp(1, 2);
    cmd.args([&format!("-t{threads}"), &format!("-c{connections}"), "-d", duration, "--latency"]);
    if let Some((h, token)) = host {
        cmd.args(["-H", &format!("Host: {h}"), "-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = cmd.arg(url).output().context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |prefix: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(prefix))?;
        let v = line.split_whitespace().nth(1)?;
        parse_wrk_number(v)
    };
    let mut m = BTreeMap::new();
    m.insert("seconds", parse_wrk_number(duration).context("a wrk duration like 5s")? / 1000.0);
    m.insert("rps", value("Requests/sec:").context("wrk printed no Requests/sec")?);
    m.insert("p50_ms", value("50%").context("wrk printed no 50% latency")?);
    m.insert("p99_ms", value("99%").context("wrk printed no 99% latency")?);
    // Answers other than 2xx/3xx, and connect, read, write and timeout errors: a rate over
    // failures would mean nothing, so callers check this.
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let socket_errors: f64 = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Socket errors:"))
        .map(|rest| rest.split(',').filter_map(|part| part.split_whitespace().nth(1)?.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    m.insert("errors", non_2xx + socket_errors);
    Ok(m)
}

/// `123.45us`, `1.20ms`, `2.00s` in milliseconds; plain numbers as they are.
pub(crate) fn parse_wrk_number(v: &str) -> Option<f64> {
    if let Some(n) = v.strip_suffix("us") {
        return n.parse::<f64>().ok().map(|x| x / 1000.0);
    }
    if let Some(n) = v.strip_suffix("ms") {
        return n.parse().ok();
    }
    if let Some(n) = v.strip_suffix('s') {
        return n.parse::<f64>().ok().map(|x| x * 1000.0);
    }
    v.parse().ok()
}

/// Unpacks the image into a rootfs and times `runc run -d` until the app's port answers.
fn runc_baseline(dir: &Path, image: &wharf_testsupport::TestImage, trials: usize) -> anyhow::Result<Vec<f64>> {
    let bundle = dir.join("runc-bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    for layer in &image.layers {
        let blob = image.layout.join("blobs/sha256").join(layer.hex());
        let reader = wharf_image::snapshot::decompress(std::io::BufReader::new(std::fs::File::open(blob)?))?;
        wharf_image::snapshot::unpack_layer(reader, &rootfs, layer, &wharf_image::snapshot::UnpackLimits::default())?;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/app/testapp"],
                    "env": ["PATH=/bin", format!("PORT={port}")], "cwd": "/",
                    "capabilities": {"bounding": ["CAP_NET_BIND_SERVICE"], "effective": ["CAP_NET_BIND_SERVICE"], "permitted": ["CAP_NET_BIND_SERVICE"]},
                    "noNewPrivileges": true},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
                   {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=1777"]}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                  "resources": {"memory": {"limit": 536_870_912_i64}, "cpu": {"quota": 100_000, "period": 100_000}}}
    });
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    let mut times = Vec::new();
    for i in 0..trials {
        let id = format!("wharf-bench-runc-{}-{i}", std::process::id());
        let t = Instant::now();
        let status = Command::new("runc")
            .args(["run", "-d", "--bundle", &bundle.to_string_lossy(), &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run runc")?;
        if !status.success() {
            bail!("runc run failed: {status}");
        }
        let answered = wait_for("runc container port", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = Command::new("runc").args(["delete", "-f", &id]).status();
        answered?;
    }
    Ok(times)
}

pub(crate) fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

pub fn print_table(rows: &[Row]) {
    println!("{:<78} {:>12} {:>12} {:>8}  baseline", "metric", "wharf", "baseline", "ratio");
    for r in rows {
        let baseline = r.baseline.map_or("-".to_owned(), |b| format!("{b:.2}"));
        let ratio = r.baseline.map_or("-".to_owned(), |b| format!("{:.2}x", r.wharf / b));
        println!("{:<78} {:>9.2} {:<2} {:>12} {:>8}  {}", r.metric, r.wharf, r.unit, baseline, ratio, r.baseline_name);
    }
}

fn write_json(path: &Path, rows: &[Row], smoke: bool) -> anyhow::Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let value = json!({
        "date": date,
        "machine": {"cores": cores, "kernel": kernel},
        "smoke": smoke,
        "rows": rows.iter().map(|r| json!({
            "metric": r.metric, "wharf": r.wharf, "unit": r.unit, "baseline": r.baseline,
            "baselineName": r.baseline_name, "ratio": r.baseline.map(|b| r.wharf / b),
            "higherIsBetter": r.higher_is_better,
        })).collect::<Vec<Value>>(),
    });
    std::fs::write(path, serde_json::to_vec_pretty(&value)?)?;
    eprintln!("results written to {}", path.display());
    Ok(())
}
