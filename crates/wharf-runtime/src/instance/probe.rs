//! Probes: the startup probe decides when an instance is ready, the liveness probe when a
//! ready one must be replaced. The default startup probe is a TCP connect to `PORT`, polled
//! with a fast backoff (from 1 ms) so an instance is ready the moment it listens.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub use wharf_control::backend::{Probe, ProbeAction};

/// One check against the instance at `ip`; `Err` says why it failed.
pub async fn check(probe: &Probe, ip: std::net::IpAddr) -> Result<(), String> {
    let attempt = async {
        match &probe.action {
            ProbeAction::Tcp { port } => {
                TcpStream::connect(SocketAddr::new(ip, *port)).await.map(|_| ()).map_err(|e| e.to_string())
            }
            ProbeAction::HttpGet { port, path } => http_get(SocketAddr::new(ip, *port), path).await,
        }
    };
    tokio::time::timeout(probe.timeout.max(Duration::from_millis(1)), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", probe.timeout)))
}

/// A minimal HTTP/1.1 GET: success is a 2xx or 3xx status, as Kubernetes counts it.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: wharf-probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let read = stream.read(&mut head[n..]).await.map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        n += read;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("malformed HTTP response")?;
    if (200..400).contains(&status) { Ok(()) } else { Err(format!("HTTP status {status}")) }
}

/// Polls `probe` with a fast backoff until it passes, the budget runs out, or the instance
/// exits. The error is the reason to show the user.
pub(crate) async fn probe_until_ready(instance: &super::Instance, probe: &Probe) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let deadline = started + probe.budget();
    tokio::time::sleep(probe.initial_delay).await;
    let mut status = instance.status.subscribe();
    let mut backoff = Duration::from_millis(1);
    loop {
        if instance.state().is_terminal() {
            return Err(exited_while_starting(instance));
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = Probe { timeout: probe.timeout.min(remaining), ..probe.clone() };
        let result = check(&attempt, instance.addr.ip()).await;
        tracing::trace!(instance = %instance.id, after = ?started.elapsed(), ?result, "startup probe");
        // The exited flag is raised before the network is torn down, so a success seen while
        // it is down really reached the container (not whatever answers for a dead address).
        if result.is_ok() && !instance.has_exited() {
            return Ok(());
        }
        if instance.has_exited() {
            // Wait for the reaper to record how it ended, then explain.
            let _ = status.wait_for(|s| s.state.is_terminal()).await;
            return Err(exited_while_starting(instance));
        }
        if tokio::time::Instant::now() >= deadline {
            let why = result.err().unwrap_or_default();
            return Err(format!(
                "The container failed to start and listen on the port defined by the PORT={} environment variable \
                 within the allocated timeout of {}s ({} failed: {why}).",
                instance.addr.port(),
                probe.budget().as_secs_f64(),
                probe.describe(),
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.min(remaining)) => {}
            _ = status.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_millis(20));
    }
}

fn exited_while_starting(instance: &super::Instance) -> String {
    let status = instance.status();
    let mut reason = match (&status.reason, &status.exit) {
        (Some(r), _) => r.clone(),
        (None, Some(exit)) => super::reap::describe_exit(exit),
        (None, None) => "The container exited.".to_owned(),
    };
    reason.push_str(&format!(" It exited before listening on port {}.", instance.addr.port()));
    let recent = instance.recent_output();
    if !recent.is_empty() {
        reason.push_str(" Last output:\n");
        reason.push_str(&recent.join("\n"));
    }
    reason
}

/// Checks a ready instance every period; after `failure_threshold` consecutive failures the
/// instance is killed and reported failed.
pub(crate) async fn watch_liveness(runtime: crate::Runtime, instance: std::sync::Arc<super::Instance>, probe: Probe) {
    tokio::time::sleep(probe.initial_delay).await;
    let mut failures = 0;
    loop {
        tokio::time::sleep(probe.period).await;
        if instance.state() != super::InstanceState::Ready {
            return;
        }
        match check(&probe, instance.addr.ip()).await {
            Ok(()) => failures = 0,
            Err(why) => {
                failures += 1;
                if failures >= probe.failure_threshold.max(1) {
                    let reason = format!("Liveness probe failed: {} failed {failures} times: {why}", probe.describe());
                    runtime.kill(&instance, reason).await;
                    return;
                }
            }
        }
    }
}
