//! `wharf-bench`: whole-system benchmarks, printed as tables with the figures a reader needs
//! to judge them. Not part of the test run (too slow and noisy for pass/fail).
//!
//! ```sh
//! cargo build --release -p wharf -p wharf-testapp
//! cargo run --release -p wharf-bench -- start [--runs 20]
//! ```
//!
//! `start`: time from `Runtime::start` to ready (startup probe passed) for testapp with its
//! layers already unpacked, split into phases, over N starts.
//!
//! `all [--smoke] [--out FILE]`: the whole-system table (see `system.rs`), also written as JSON
//! (default `bench-results.json`); `--smoke` runs few iterations (CI runs it so it cannot rot).
//!
//! `instances [--count 1000] [--smoke] [--wharf PATH]`: memory per idle instance and N
//! instances started and each answering once, with their memory (see `instances.rs`).
//!
//! `proxy [--rounds 5] [--seconds 5]`: the warm proxy rows of `all` alone, in more alternating
//! rounds: Wharf, direct, nginx and HAProxy throughput, and the latency added at 1,000 req/s
//! (see `proxy.rs`), and the real app row (Flask on gunicorn, `realapp.rs`).
//!
//! `cpu [--smoke]`: the CPU allocation rows of `all` alone (idle CPU, thaw latency; `cpu.rs`).
//!
//! `protocols [--requests 20000]`: HTTP/1.1, h2c, HTTP/1.1 over TLS and h2 over TLS through
//! the ingress, and the cost of a TLS handshake, with h2load (see `protocols.rs`).
//!
//! `flood [--clients 1000] [--rounds 3] [--waves 3]`: concurrent clients against a service scaled to zero
//! with `--max-instances 5`; fails unless every answer is 200, 429 or 503 (see `flood.rs`).

mod baselines;
mod cpu;
mod flood;
mod instances;
mod invoker;
mod logquery;
mod openloop;
mod protocols;
mod proxy;
mod realapp;
mod system;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use wharf_image::archive::ImageArchive;
use wharf_image::remote::RemoteRegistry;
use wharf_image::{ImageStore, Resolver, SnapshotStore};
use wharf_runtime::{InstanceSpec, Owner, Probe, Resources, Runtime, RuntimeConfig, StartPhases};
use wharf_store::Store;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>())
        .transpose()
        .context("--runs takes a number")?
        .unwrap_or(20);
    // `--flag N`, or `default` when the flag is absent.
    let number = |flag: &str, default: usize| -> anyhow::Result<usize> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|n| n.parse::<usize>())
            .transpose()
            .with_context(|| format!("{flag} takes a number"))
            .map(|n| n.unwrap_or(default))
    };
    match args.first().map(String::as_str) {
        Some("start") => tokio::runtime::Runtime::new()?.block_on(instance_start(runs)),
        Some("all") => {
            let out = args
                .iter()
                .position(|a| a == "--out")
                .and_then(|i| args.get(i + 1))
                .map_or_else(|| PathBuf::from("bench-results.json"), PathBuf::from);
            let smoke = args.iter().any(|a| a == "--smoke");
            tokio::runtime::Runtime::new()?.block_on(system::run(system::Options { smoke, out }))
        }
        Some("instances") => {
            let count = args
                .iter()
                .position(|a| a == "--count")
                .and_then(|i| args.get(i + 1))
                .map(|n| n.parse::<usize>())
                .transpose()
                .context("--count takes a number")?;
            let smoke = args.iter().any(|a| a == "--smoke");
            let wharf = args.iter().position(|a| a == "--wharf").and_then(|i| args.get(i + 1)).map(PathBuf::from);
            let count = count.unwrap_or(if smoke { 20 } else { 1000 });
            tokio::runtime::Runtime::new()?.block_on(instances::run(count, smoke, wharf))
        }
        Some("proxy") => {
            let (rounds, seconds) = (number("--rounds", 5)?, number("--seconds", 5)?);
            tokio::runtime::Runtime::new()?.block_on(proxy::run(rounds, u64::try_from(seconds)?))
        }
        Some("cold") => tokio::runtime::Runtime::new()?.block_on(system::cold(number("--runs", 30)?)),
        Some("cpu") => tokio::runtime::Runtime::new()?.block_on(cpu::run(args.iter().any(|a| a == "--smoke"))),
        Some("protocols") => {
            let requests = number("--requests", 20_000)?;
            tokio::runtime::Runtime::new()?.block_on(protocols::run(requests))
        }
        Some("flood") => {
            let (clients, rounds, waves) = (number("--clients", 1000)?, number("--rounds", 3)?, number("--waves", 3)?);
            tokio::runtime::Runtime::new()?.block_on(flood::run(clients, rounds, waves))
        }
        Some("logs") => {
            let entries = number("--entries", 1_000_000)?;
            let rows = tokio::runtime::Runtime::new()?.block_on(logquery::rows(entries))?;
            system::print_table(&rows);
            Ok(())
        }
        _ => bail!(
            "usage: wharf-bench start [--runs N] | wharf-bench cold [--runs N] | wharf-bench all [--smoke] [--out FILE] | \
             wharf-bench flood [--clients N] [--rounds N] [--waves N] | wharf-bench logs [--entries N] | \
             wharf-bench protocols [--requests N] | wharf-bench proxy [--rounds N] [--seconds N] | wharf-bench cpu [--smoke] | \
             wharf-bench instances [--count N] [--smoke] [--wharf PATH]"
        ),
    }
}

/// The `wharf` binary next to this one (same profile), which serves as the shim.
fn wharf_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("wharf");
    if !path.exists() {
        bail!("{} is missing: build it first with `cargo build --release -p wharf -p wharf-testapp`", path.display());
    }
    Ok(path)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // an index into a short vector
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn instance_start(runs: usize) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("wharf-bench-").tempdir()?;
    let db = Store::open(&dir.path().join("state.db"))?;
    let images = ImageStore::open(dir.path(), db.clone())?;
    let built = wharf_testsupport::testapp_image(dir.path(), "bench")?;
    images.import(&ImageArchive::open(&built.layout, Some("bench"))?, "testapp", "bench")?;
    let snapshots = Arc::new(SnapshotStore::open(&dir.path().join("snapshots"), images.blobs().clone())?);
    let resolver = Resolver::new(images, snapshots, Arc::new(RemoteRegistry::new(None)), vec![]);
    let image = resolver.load("testapp", "bench")?;
    let layers = resolver.snapshots(&image).await?;
    let config = RuntimeConfig {
        log_retention_lines: 10_000,
        // As the server does: each start maps the instance's DNS, metadata and ingress
        // addresses (to loopback ports nothing listens on; the bench sends no DNS).
        instance_services: Some(wharf_runtime::network::InstanceServices {
            dns: "127.0.0.1:9".parse()?,
            metadata: "127.0.0.1:9".parse()?,
            ingress: Some("127.0.0.1:9".parse()?),
        }),
        ..RuntimeConfig::new(dir.path().to_owned(), wharf_binary()?)
    };
    let runtime = Runtime::open(config, db).await?;

    let mut phases: Vec<StartPhases> = Vec::new();
    let mut wall: Vec<f64> = Vec::new();
    for i in 0..runs + 1 {
        let spec = InstanceSpec {
            owner: Owner::Service {
                service: "bench".into(),
                revision: "bench-00001-abc".into(),
                configuration: "bench".into(),
            },
            image: image.clone(),
            layers: layers.clone(),
            command: None,
            args: None,
            working_dir: None,
            env: vec![],
            port: 8080,
            resources: Resources::default(),
            cpu: Default::default(),
            startup_probe: Some(Probe::default_startup(8080)),
            liveness_probe: None,
            grace_period: Duration::from_secs(10),
            vpc_network: None,
            secret_files: Vec::new(),
            memory_volumes: Vec::new(),
        };
        let t = Instant::now();
        let instance = runtime.start(spec).await?;
        let elapsed = t.elapsed();
        runtime.stop(&instance).await;
        if i > 0 {
            // The first start warms caches (page cache, binaries); it is not counted.
            wall.push(elapsed.as_secs_f64() * 1000.0);
            phases.push(instance.phases());
        }
    }
    runtime.shutdown().await;

    let column = |f: &dyn Fn(&StartPhases) -> u64| {
        let mut v: Vec<f64> = phases.iter().map(|p| ms(f(p))).collect();
        v.sort_by(f64::total_cmp);
        (percentile(&v, 0.5), percentile(&v, 0.9))
    };
    wall.sort_by(f64::total_cmp);
    println!("instance start to ready, testapp, layers unpacked, {runs} starts (ms)");
    println!("{:<28} {:>8} {:>8}", "phase", "p50", "p90");
    type Phase<'a> = &'a dyn Fn(&StartPhases) -> u64;
    let rows: [(&str, Phase<'_>); 6] = [
        ("rootfs (tmpfs + overlay)", &|p| p.rootfs_us),
        ("network (netns, veth, DNAT)", &|p| p.network_us),
        ("container create", &|p| p.create_us),
        ("exec", &|p| p.exec_us),
        ("first listen", &|p| p.first_listen_us),
        ("total (runtime)", &|p| p.total_us),
    ];
    for (name, f) in rows {
        let (p50, p90) = column(f);
        println!("{name:<28} {p50:>8.2} {p90:>8.2}");
    }
    println!("{:<28} {:>8.2} {:>8.2}", "total (caller wall clock)", percentile(&wall, 0.5), percentile(&wall, 0.9));
    Ok(())
}
