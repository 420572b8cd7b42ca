//! Probes: the startup probe decides when an instance is ready, the liveness probe when a
//! ready one must be replaced. The default startup probe is a TCP connect to `PORT`, polled
//! with a fast backoff (from 1 ms) so an instance is ready the moment it listens.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Why a probe failed, or why an instance never became ready.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connecting to {addr} failed")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {addr} failed")]
    Io {
        op: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer within {timeout:?}")]
    Timeout { timeout: Duration },
    #[error("malformed HTTP response from {addr}: {head:?}")]
    MalformedResponse { addr: SocketAddr, head: String },
    #[error("HTTP status {status}")]
    Status { status: u16 },
    /// The startup probe's budget ran out; `last` is the last attempt's failure.
    #[error(
        "The container failed to start and listen on the port defined by the PORT={port} environment variable \
         within the allocated timeout of {budget_s}s ({probe} failed: {}).",
        chain(last)
    )]
    NotReady { port: u16, budget_s: f64, probe: String, last: Box<ProbeError> },
    /// The container exited before its startup probe passed: how it ended and its last output.
    #[error("{reason}")]
    ExitedWhileStarting { reason: String },
}

/// An error and its sources, `: `-separated: a probe failure in words for the user.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

pub use wharf_control::backend::{Probe, ProbeAction};

/// Running a probe against an instance (the probe itself is the control plane's data).
pub trait ProbeCheck {
    /// One check against the instance at `ip`, within the probe's timeout.
    fn check(&self, ip: std::net::IpAddr) -> impl std::future::Future<Output = Result<(), ProbeError>> + Send;
}

impl ProbeCheck for Probe {
    async fn check(&self, ip: std::net::IpAddr) -> Result<(), ProbeError> {
        let attempt = async {
            match &self.action {
                ProbeAction::Tcp { port } => {
                    let addr = SocketAddr::new(ip, *port);
                    TcpStream::connect(addr).await.map(|_| ()).map_err(|source| ProbeError::Connect { addr, source })
                }
                ProbeAction::HttpGet { port, path } => http_get(SocketAddr::new(ip, *port), path).await,
            }
        };
        tokio::time::timeout(self.timeout.max(Duration::from_millis(1)), attempt)
            .await
            .unwrap_or(Err(ProbeError::Timeout { timeout: self.timeout }))
    }
}

/// A minimal HTTP/1.1 GET: success is a 2xx or 3xx status, as Kubernetes counts it.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr).await.map_err(|source| ProbeError::Connect { addr, source })?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: wharf-probe\r\nConnection: close\r\n\r\n");
    let io = |op| move |source| ProbeError::Io { op, addr, source };
    stream.write_all(request.as_bytes()).await.map_err(io("sending the request to"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let read = stream.read(&mut head[n..]).await.map_err(io("reading the response from"))?;
        if read == 0 {
            break;
        }
        n += read;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProbeError::MalformedResponse { addr, head: line.clone().into_owned() })?;
    if (200..400).contains(&status) { Ok(()) } else { Err(ProbeError::Status { status }) }
}

/// Polls `probe` with a fast backoff until it passes, the budget runs out, or the instance
/// exits. The error's message is the reason to show the user: [`ProbeError::NotReady`] or
/// [`ProbeError::ExitedWhileStarting`].
pub(crate) async fn probe_until_ready(instance: &super::Instance, probe: &Probe) -> Result<(), ProbeError> {
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
        let result = attempt.check(instance.addr.ip()).await;
        tracing::trace!(after = ?started.elapsed(), ?result, "startup probe");
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
        if tokio::time::Instant::now() >= deadline
            && let Err(last) = result
        {
            return Err(ProbeError::NotReady {
                port: instance.addr.port(),
                budget_s: probe.budget().as_secs_f64(),
                probe: probe.describe(),
                last: Box::new(last),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.min(remaining)) => {}
            _ = status.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_millis(20));
    }
}

fn exited_while_starting(instance: &super::Instance) -> ProbeError {
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
    ProbeError::ExitedWhileStarting { reason }
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
        match probe.check(instance.addr.ip()).await {
            Ok(()) => failures = 0,
            Err(why) => {
                failures += 1;
                tracing::debug!(failures, error = %chain(&why), "liveness probe failed");
                if failures >= probe.failure_threshold.max(1) {
                    let why = chain(&why);
                    let reason = format!("Liveness probe failed: {} failed {failures} times: {why}", probe.describe());
                    runtime.kill(&instance, reason).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    fn probe(action: ProbeAction) -> Probe {
        Probe {
            action,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            failure_threshold: 1,
        }
    }

    /// Serves one connection with `response` and returns the port.
    async fn serve_once(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(response.as_bytes()).await;
        });
        port
    }

    #[tokio::test]
    async fn probe_failures_say_what_failed() {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        match probe(ProbeAction::Tcp { port: closed }).check(ip).await {
            Err(e @ ProbeError::Connect { addr, .. }) => {
                assert_eq!(addr.port(), closed);
                assert!(chain(&e).contains("refused"), "{}", chain(&e));
            }
            other => panic!("expected a connect error, got {other:?}"),
        }

        let port = serve_once("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        match probe(ProbeAction::HttpGet { port, path: "/healthz".into() }).check(ip).await {
            Err(ProbeError::Status { status }) => assert_eq!(status, 500),
            other => panic!("expected an HTTP status error, got {other:?}"),
        }
        let port = serve_once("nonsense\r\n").await;
        match probe(ProbeAction::HttpGet { port, path: "/".into() }).check(ip).await {
            Err(ProbeError::MalformedResponse { head, .. }) => assert_eq!(head, "nonsense\r\n"),
            other => panic!("expected a malformed response, got {other:?}"),
        }
        let port = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        probe(ProbeAction::HttpGet { port, path: "/".into() }).check(ip).await.unwrap();
    }

    #[test]
    fn not_ready_explains_with_the_last_failure() {
        let last = ProbeError::Timeout { timeout: Duration::from_millis(500) };
        let e = ProbeError::NotReady {
            port: 8080,
            budget_s: 1.0,
            probe: "TCP probe on port 8080".into(),
            last: Box::new(last),
        };
        assert_eq!(
            e.to_string(),
            "The container failed to start and listen on the port defined by the PORT=8080 environment variable \
             within the allocated timeout of 1s (TCP probe on port 8080 failed: no answer within 500ms)."
        );
    }
}
