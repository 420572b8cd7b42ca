//! `wharf-bench protocols`: the same warm service through the ingress over HTTP/1.1, h2c,
//! HTTP/1.1 over TLS and h2 over TLS, measured side by side in one run with `h2load`
//! (`apt-get install nghttp2-client`), plus what a TLS handshake adds to opening a connection
//! (one request per connection, `h2load`'s mean "time for connect").
//!
//! [`tls_rows`] (part of `wharf-bench all`) puts HTTPS through Wharf next to nginx terminating
//! TLS in front of the same instance, in the same run, with a certificate of the same kind
//! (ECDSA P-256, issued by the server's local CA for the same host name): requests per second
//! over h2 and HTTP/1.1, and new TLS connections per second (one request each).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use wharf_testsupport::{WharfServer, service_host};

use crate::system::{cli, wharf_binary};

struct Run {
    rps: f64,
    connect_ms: f64,
}

/// One h2load run with extra request headers; `h1` forces HTTP/1.1 (ALPN http/1.1 over TLS).
fn h2load_with(
    url: &str,
    connect_to: &str,
    host: &str,
    h1: bool,
    requests: usize,
    clients: usize,
    headers: &[String],
) -> anyhow::Result<Run> {
    let mut cmd = Command::new("h2load");
    for header in headers {
        cmd.args(["-H", header]);
    }
    cmd.args(["-n", &requests.to_string(), "-c", &clients.to_string(), "-m", "1", "--connect-to", connect_to]);
    cmd.args(["-H", &format!(":authority: {host}")]);
    if h1 {
        cmd.arg("--h1");
    }
    let out = cmd.arg(url).output().context("cannot run h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let succeeded = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(',').find(|p| p.contains("succeeded")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if succeeded != requests {
        bail!("h2load {url}: {succeeded} of {requests} requests succeeded:\n{text}");
    }
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .context("h2load printed no req/s")?;
    let connect_ms = text
        .lines()
        .find(|l| l.trim_start().starts_with("time for connect:"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(crate::system::parse_wrk_number)
        .context("h2load printed no connect time")?;
    Ok(Run { rps, connect_ms })
}

pub async fn run(requests: usize) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("wharf-bench-").tempdir()?;
    let image = wharf_testsupport::testapp_image(work.path(), "bench")?;
    let server = WharfServer::start_with_env(
        &wharf_binary()?,
        &[("WHARF_LOG", "warn"), ("WHARF_HTTPS_ADDR", "127.0.0.1:0"), ("WHARF_IDLE_TIMEOUT", "10m")],
    )?;
    cli(&server, &["images", "import", &image.layout.to_string_lossy(), "--tag", "bench:v1"])?;
    let image_ref = format!("{}/bench:v1", server.addrs.registry_addr);
    cli(&server, &["run", "deploy", "warm", "--image", &image_ref, "--project", "bench", "--min-instances", "1"])?;
    let host = service_host("warm", "bench");
    let plain = server.addrs.ingress_addr.clone();
    let https = server.addrs.https_addr.clone().context("the server wrote no httpsAddr")?;
    // Services are private: every request carries the owner's token.
    let auth = [format!("authorization: Bearer {}", server.token)];
    // Warm up each path (instance, upstream connections, the host's certificate).
    for (url, to, h1) in [(format!("http://{host}/"), &plain, true), (format!("https://{host}/"), &https, false)] {
        h2load_with(&url, to, &host, h1, 200, 4, &auth)?;
    }
    std::thread::sleep(Duration::from_millis(200));

    println!("{:<44} {:>12} {:>16}", "through the ingress, 16 connections", "req/s", "connect mean ms");
    let rows = [
        ("HTTP/1.1", format!("http://{host}/"), &plain, true),
        ("h2c (prior knowledge)", format!("http://{host}/"), &plain, false),
        ("HTTP/1.1 over TLS", format!("https://{host}/"), &https, true),
        ("h2 over TLS", format!("https://{host}/"), &https, false),
    ];
    for (name, url, to, h1) in &rows {
        let run = h2load_with(url, to, &host, *h1, requests, 16, &auth)?;
        println!("{name:<44} {:>12.0} {:>16.3}", run.rps, run.connect_ms);
    }
    // A new connection per request: what opening one costs, with and without TLS.
    println!("{:<44} {:>12} {:>16}", "one request per connection (400)", "req/s", "connect mean ms");
    for (name, url, to) in [
        ("plain TCP, HTTP/1.1", format!("http://{host}/"), &plain),
        ("TLS handshake, HTTP/1.1", format!("https://{host}/"), &https),
    ] {
        let run = h2load_with(&url, to, &host, true, 400, 400, &auth)?;
        println!("{name:<44} {:>12.0} {:>16.3}", run.rps, run.connect_ms);
    }
    Ok(())
}

/// HTTPS through Wharf's ingress (`https`, the service's `host`, the owner's `token`) vs nginx
/// terminating TLS to the same instance (`direct`), in this run: requests per second over h2
/// and HTTP/1.1 (16 connections), and new TLS connections per second (one request each).
pub(crate) fn tls_rows(
    server: &WharfServer,
    dir: &std::path::Path,
    host: &str,
    direct: &str,
    smoke: bool,
) -> anyhow::Result<Vec<crate::system::Row>> {
    let https = server.addrs.https_addr.clone().context("the server wrote no httpsAddr")?;
    let ca = wharf_router::tls::LocalCa::open(&server.data_dir().join("tls"))?;
    let (cert, key) = ca.issue_pem(host)?;
    let nginx = crate::baselines::ReverseProxy::nginx_tls(dir, &cert, &key, direct)?;
    let nginx_addr = format!("127.0.0.1:{}", nginx.port);
    let auth = [format!("authorization: Bearer {}", server.token)];
    let url = format!("https://{host}/");
    // New connections at once stay under the instance's concurrency (80), so none waits in
    // Wharf's queue or is refused: the rows measure handshakes, not queueing.
    let (requests, handshakes) = if smoke { (400, 64) } else { (20_000, 64) };
    for to in [&https, &nginx_addr] {
        h2load_with(&url, to, host, false, 100, 4, &auth)?;
    }
    let mut rows = Vec::new();
    for (name, h1) in [("h2", false), ("HTTP/1.1", true)] {
        let wharf = h2load_with(&url, &https, host, h1, requests, 16, &auth)?;
        let baseline = h2load_with(&url, &nginx_addr, host, h1, requests, 16, &[])?;
        rows.push(crate::system::Row {
            metric: format!("HTTPS throughput, {name} over TLS, 16 connections"),
            wharf: wharf.rps,
            baseline: Some(baseline.rps),
            baseline_name: "nginx terminating TLS to the same instance".into(),
            unit: "req/s",
            higher_is_better: true,
        });
    }
    let wharf = h2load_with(&url, &https, host, true, handshakes, handshakes, &auth)?;
    let baseline = h2load_with(&url, &nginx_addr, host, true, handshakes, handshakes, &[])?;
    rows.push(crate::system::Row {
        metric: format!("TLS handshakes: {handshakes} new connections at once, one request each"),
        wharf: wharf.rps,
        baseline: Some(baseline.rps),
        baseline_name: "nginx terminating TLS to the same instance".into(),
        unit: "conn/s",
        higher_is_better: true,
    });
    rows.push(crate::system::Row {
        metric: format!("TLS handshakes: {handshakes} new connections at once, mean time to connect"),
        wharf: wharf.connect_ms,
        baseline: Some(baseline.connect_ms),
        baseline_name: "nginx terminating TLS to the same instance".into(),
        unit: "ms",
        higher_is_better: false,
    });
    Ok(rows)
}
