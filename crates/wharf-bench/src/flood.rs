//! `wharf-bench flood`: many concurrent clients against a service scaled to zero with
//! `--max-instances 5`, to check the edge holds: every request must be answered 200, 429 or
//! 503 (a client that waits past its deadline counts as a hang, a broken connection as a
//! reset; both must be zero), and the server's memory must come back down once the load is
//! gone and stay bounded over repeated floods (`waves`, each from zero instances). Every loop is
//! bounded: `clients` tasks each send `rounds` requests.
//!
//! ```sh
//! cargo run --release -p wharf-bench -- flood [--clients 1000] [--rounds 3] [--waves 3]
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use wharf_testsupport::{WharfServer, service_host};

use crate::system::{cli, instances, rss_kib, wait_for, wharf_binary};

/// How long one client waits for its answer before it counts the request as a hang (well
/// past the server's 10 s queue timeout and the request's 60 s timeout).
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// What each request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Status(u16),
    Hang,
    Reset,
}

pub async fn run(clients: usize, rounds: usize, waves: usize) -> anyhow::Result<()> {
    raise_nofile_limit();
    let work = tempfile::Builder::new().prefix("wharf-bench-").tempdir()?;
    let image = wharf_testsupport::testapp_image(work.path(), "bench")?;
    let server = WharfServer::start_with_env(&wharf_binary()?, &[("WHARF_IDLE_TIMEOUT", "2s"), ("WHARF_LOG", "warn")])?;
    cli(&server, &["images", "import", &image.layout.to_string_lossy(), "--tag", "bench:v1"])?;
    let image_ref = format!("{}/bench:v1", server.addrs.registry_addr);
    cli(
        &server,
        &[
            "run",
            "deploy",
            "flood",
            "--image",
            &image_ref,
            "--project",
            "bench",
            "--max-instances",
            "5",
            "--concurrency",
            "10",
            "--timeout",
            "60",
        ],
    )?;
    let mut failed = 0;
    for wave in 1..=waves {
        wait_for("scale to zero before the flood", Duration::from_secs(120), || instances(&server, "flood") == 0)?;
        failed += flood_once(&server, wave, clients, rounds).await?;
    }
    if failed > 0 {
        let log = server.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("server log (last lines, newest first):\n{}", tail.join("\n"));
        bail!("{failed} requests got something other than 200, 429 or 503");
    }
    Ok(())
}

/// One flood against the scaled-to-zero service; prints what the requests got and the
/// server's RSS, and returns how many got something other than 200, 429 or 503.
async fn flood_once(server: &WharfServer, wave: usize, clients: usize, rounds: usize) -> anyhow::Result<usize> {
    let rss_before = rss_kib(server.addrs.pid);
    let url = format!("http://{}/sleep?ms=200", server.addrs.ingress_addr);
    let started = Instant::now();
    let peak_rss = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (pid, peak) = (server.addrs.pid, peak_rss.clone());
        tokio::spawn(async move {
            loop {
                // Sampled every 100 ms while the flood runs; aborted after it.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole KiB
                peak.fetch_max(rss_kib(pid) as u64, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // One client shared by every task (building a reqwest client per task costs more CPU than
    // the whole request, on a machine this small); concurrent requests still each get their
    // own connection, kept alive between rounds.
    let client = server.client_builder().build()?;
    let host = service_host("flood", "bench");
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (url, client, host) = (url.clone(), client.clone(), host.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut outcomes = Vec::with_capacity(rounds);
                for _ in 0..rounds {
                    let request = client.get(&url).header("Host", &host).send();
                    let outcome = match tokio::time::timeout(CLIENT_DEADLINE, async {
                        let response = request.await?;
                        let status = response.status().as_u16();
                        response.bytes().await?;
                        Ok::<_, reqwest::Error>(status)
                    })
                    .await
                    {
                        Ok(Ok(status)) => Outcome::Status(status),
                        Ok(Err(e)) => {
                            eprintln!("flood: request failed after {:.1}s: {e}", started.elapsed().as_secs_f64());
                            Outcome::Reset
                        }
                        Err(_) => Outcome::Hang,
                    };
                    outcomes.push(outcome);
                }
                Ok::<_, anyhow::Error>(outcomes)
            })
        })
        .collect();
    let mut counts: BTreeMap<Outcome, usize> = BTreeMap::new();
    for task in tasks {
        for outcome in task.await?? {
            *counts.entry(outcome).or_default() += 1;
        }
    }
    let elapsed = started.elapsed();
    sampler.abort();
    let rss_after_load = rss_kib(server.addrs.pid);
    wait_for("scale to zero after the flood", Duration::from_secs(120), || instances(server, "flood") == 0)?;
    let rss_after_idle = rss_kib(server.addrs.pid);

    let total = clients * rounds;
    println!(
        "flood {wave}: {clients} concurrent clients x {rounds} requests (GET /sleep?ms=200), service scaled to zero,"
    );
    println!("       --max-instances 5 --concurrency 10, in {:.1} s", elapsed.as_secs_f64());
    for (outcome, n) in &counts {
        let name = match outcome {
            Outcome::Status(s) => format!("HTTP {s}"),
            Outcome::Hang => format!("hang (no answer in {}s)", CLIENT_DEADLINE.as_secs()),
            Outcome::Reset => "reset / connection error".to_owned(),
        };
        println!("  {name:<32} {n:>7}  ({:.1}%)", 100.0 * *n as f64 / total as f64);
    }
    let mib = |kib: f64| kib / 1024.0;
    println!(
        "server RSS: before {:.1} MiB, peak during {:.1} MiB, right after {:.1} MiB, after scale to zero {:.1} MiB",
        mib(rss_before),
        mib(peak_rss.load(std::sync::atomic::Ordering::Relaxed) as f64),
        mib(rss_after_load),
        mib(rss_after_idle)
    );
    let bad: usize =
        counts.iter().filter(|(o, _)| !matches!(o, Outcome::Status(200 | 429 | 503))).map(|(_, n)| n).sum();
    Ok(bad)
}

/// A thousand client connections need more descriptors than the usual soft limit of 1024.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("cannot raise the open file limit from {soft} to {hard}: {e}");
    }
}
