//! Probes: the startup probe decides when an instance is ready, the liveness probe when a
//! ready one must be replaced. The default startup probe is a TCP connect to `PORT`, polled
//! with a fast backoff (from 1 ms) so an instance is ready the moment it listens. An HTTP probe
//! is a GET over HTTP/1.1; a gRPC probe is a call to the standard health service
//! (`grpc.health.v1.Health/Check`) over HTTP/2 cleartext, passing when it answers `SERVING`.

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
    #[error("HTTP/2 {op} {addr} failed")]
    Http2 {
        op: &'static str,
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The health call failed as a gRPC call (12 UNIMPLEMENTED: the server has no health
    /// service; 5 NOT_FOUND: it does not know the service asked about).
    #[error("the gRPC health check answered grpc-status {code} ({message:?})")]
    GrpcStatus { code: String, message: String },
    #[error("the gRPC health check answered {status}, not SERVING")]
    NotServing { status: &'static str },
    #[error("malformed gRPC health response from {addr}: {problem}")]
    MalformedGrpc { addr: SocketAddr, problem: &'static str },
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
                ProbeAction::Grpc { port, service } => grpc_health(SocketAddr::new(ip, *port), service).await,
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

/// One call of `grpc.health.v1.Health/Check` for `service` over HTTP/2 cleartext (the request
/// and response messages are encoded here by hand: one optional string field, one enum).
async fn grpc_health(addr: SocketAddr, service: &str) -> Result<(), ProbeError> {
    use http_body_util::BodyExt as _;
    let stream = TcpStream::connect(addr).await.map_err(|source| ProbeError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|source| ProbeError::Http2 { op: "handshake with", addr, source })?;
    // Ends when `sender` is dropped, at the latest when this probe ends.
    tokio::spawn(connection);
    let request = hyper::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header(hyper::header::TE, "trailers")
        .header(hyper::header::USER_AGENT, "wharf-probe")
        .body(http_body_util::Full::new(bytes::Bytes::from(health_check_request(service))))
        .map_err(|_| ProbeError::MalformedGrpc { addr, problem: "the service name makes an invalid request" })?;
    let response =
        sender.send_request(request).await.map_err(|source| ProbeError::Http2 { op: "calling", addr, source })?;
    if response.status() != hyper::StatusCode::OK {
        return Err(ProbeError::Status { status: response.status().as_u16() });
    }
    let head = response.headers().clone();
    let collected = response.into_body().collect().await.map_err(|source| ProbeError::Http2 {
        op: "reading from",
        addr,
        source,
    })?;
    // A failed call may come "trailers-only": its status in the headers.
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field =
        |name: &str| trailers.get(name).or_else(|| head.get(name)).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match field("grpc-status") {
        Some(code) if code == "0" => {}
        Some(code) => return Err(ProbeError::GrpcStatus { code, message: field("grpc-message").unwrap_or_default() }),
        None => return Err(ProbeError::MalformedGrpc { addr, problem: "no grpc-status" }),
    }
    match health_status(&collected.to_bytes()) {
        Some(1) => Ok(()),
        Some(status) => Err(ProbeError::NotServing { status: serving_status_name(status) }),
        None => Err(ProbeError::MalformedGrpc { addr, problem: "the message is not a HealthCheckResponse" }),
    }
}

/// A length-prefixed, uncompressed gRPC message holding `HealthCheckRequest { service = 1 }`.
fn health_check_request(service: &str) -> Vec<u8> {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        let mut len = service.len();
        while len >= 0x80 {
            message.push(u8::try_from(len & 0x7f).unwrap_or(0) | 0x80);
            len >>= 7;
        }
        message.push(u8::try_from(len).unwrap_or(0));
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

/// The `status` (field 1) of a length-prefixed `HealthCheckResponse`; absent means 0
/// (UNKNOWN). None if the bytes are not such a message.
fn health_status(framed: &[u8]) -> Option<u64> {
    let (&compressed, rest) = framed.split_first()?;
    let (len, mut message) = rest.split_first_chunk::<4>()?;
    if compressed != 0 || usize::try_from(u32::from_be_bytes(*len)).ok()? != message.len() {
        return None;
    }
    let mut status = 0;
    while let Some((&tag, rest)) = message.split_first() {
        message = rest;
        let value = varint(&mut message)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = value,
            (_, 0) => {}
            (_, 2) => message = message.get(usize::try_from(value).ok()?..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn serving_status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "an unknown status",
    }
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
    // The last failure that says something: an attempt the budget cut short (it had less
    // than the probe's timeout) and that timed out is no news when an earlier one explained.
    let mut last_failure: Option<ProbeError> = None;
    loop {
        if instance.state().is_terminal() {
            return Err(exited_while_starting(instance));
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = Probe { timeout: probe.timeout.min(remaining), ..probe.clone() };
        let mut result = attempt.check(instance.addr.ip()).await;
        tracing::trace!(after = ?started.elapsed(), ?result, "startup probe");
        if matches!(result, Err(ProbeError::Timeout { .. }))
            && attempt.timeout < probe.timeout
            && let Some(earlier) = last_failure.take()
        {
            result = Err(earlier);
        }
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
        if let Err(failure) = result {
            if tokio::time::Instant::now() >= deadline {
                return Err(ProbeError::NotReady {
                    port: instance.addr.port(),
                    budget_s: probe.budget().as_secs_f64(),
                    probe: probe.describe(),
                    last: Box::new(failure),
                });
            }
            last_failure = Some(failure);
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
        // A probe is a request: a frozen instance is thawed to answer it.
        instance.cpu.request_started();
        let checked = probe.check(instance.addr.ip()).await;
        instance.cpu.request_ended();
        match checked {
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

    #[test]
    fn grpc_health_messages_are_encoded_and_read_as_protobuf() {
        assert_eq!(health_check_request(""), [0, 0, 0, 0, 0]);
        assert_eq!(health_check_request("a.B"), [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']);
        let long = "s".repeat(200);
        assert_eq!(&health_check_request(&long)[5..8], &[0x0a, 0xc8, 0x01]);
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08, 0x01]), Some(1));
        assert_eq!(health_status(&[0, 0, 0, 0, 0]), Some(0), "an absent status is UNKNOWN");
        // An unknown length-delimited field is skipped.
        assert_eq!(health_status(&[0, 0, 0, 0, 6, 0x12, 2, b'x', b'y', 0x08, 0x02]), Some(2));
        assert_eq!(health_status(&[1, 0, 0, 0, 2, 0x08, 0x01]), None, "compressed");
        assert_eq!(health_status(&[0, 0, 0, 0, 9, 0x08, 0x01]), None, "wrong length");
    }

    #[tokio::test]
    async fn a_grpc_probe_against_a_server_without_http2_fails_with_the_reason() {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let port = serve_once("HTTP/1.1 400 Bad Request\r\n\r\n").await;
        match probe(ProbeAction::Grpc { port, service: String::new() }).check(ip).await {
            Err(e @ ProbeError::Http2 { .. }) => assert!(chain(&e).starts_with("HTTP/2 "), "{}", chain(&e)),
            other => panic!("expected an HTTP/2 failure, got {other:?}"),
        }
    }
}
