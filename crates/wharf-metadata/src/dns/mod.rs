//! Wharf's DNS resolver, the `nameserver` of every instance (at 169.254.169.254:53, DNAT'd
//! here). It answers itself:
//!
//! - `metadata.google.internal` with 169.254.169.254, as on Google's VMs;
//! - the names [`LocalNames`] claims (the server answers its service URL hosts with the
//!   address instances reach the ingress at);
//!
//! and forwards every other query, as received, to the resolvers of a resolv.conf (the
//! host's by default) over the transport it came in on. UDP and TCP on the same port. It is
//! bounded: at most [`MAX_UDP_IN_FLIGHT`] forwarded UDP queries (beyond that, SERVFAIL at
//! once) and [`MAX_TCP_CONNECTIONS`] TCP connections, each closed after [`TCP_IDLE`]
//! without a query; an upstream has [`upstream::UPSTREAM_TIMEOUT`] per query.

pub mod message;
pub mod upstream;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use message::{Rcode, TYPE_A};
use upstream::Upstreams;

pub const MAX_UDP_IN_FLIGHT: usize = 256;
pub const MAX_TCP_CONNECTIONS: usize = 64;
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// The metadata server's name and address on Google's VMs.
pub const METADATA_NAME: &str = "metadata.google.internal";
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// TTL of the answers Wharf gives itself: short, so a deleted service's name goes quickly.
const LOCAL_TTL: u32 = 30;

/// Names the server answers itself, beyond the metadata server's: `Some(address)` for a
/// lowercase name without trailing dot that is the server's own.
pub type LocalNames = Arc<dyn Fn(&str) -> Option<Ipv4Addr> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind the DNS resolver on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the upstream resolvers from {path} (set --upstream-resolv-conf to a readable resolv.conf)")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("forwarding to the resolver {upstream} failed")]
    Upstream {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the resolver {upstream} did not answer in time")]
    UpstreamTimeout { upstream: SocketAddr },
}

/// How to start a [`DnsServer`].
#[derive(Clone)]
pub struct DnsConfig {
    /// The host address to listen on (port chosen by the kernel).
    pub bind: Ipv4Addr,
    /// The resolv.conf whose `nameserver`s get the queries Wharf does not answer.
    pub upstream_resolv_conf: PathBuf,
    pub local_names: LocalNames,
}

impl std::fmt::Debug for DnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsConfig")
            .field("bind", &self.bind)
            .field("upstream_resolv_conf", &self.upstream_resolv_conf)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

struct Resolver {
    upstreams: Upstreams,
    local_names: LocalNames,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("upstreams", &self.upstreams).finish_non_exhaustive()
    }
}

/// A running resolver; stops when [`DnsServer::shutdown`] is called or it is dropped.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddrV4,
    stop: CancellationToken,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DnsServer {
    /// Binds UDP and TCP on one free port of `config.bind` and serves until shut down.
    /// Must run inside a tokio runtime.
    pub async fn start(config: DnsConfig) -> Result<DnsServer, DnsError> {
        // Fail now, not at the first query, if the upstream file cannot be read.
        let upstreams = Upstreams::new(&config.upstream_resolv_conf);
        upstreams.current()?;
        let (tcp, udp) = bind_pair(config.bind).await?;
        let addr = match tcp.local_addr() {
            Ok(SocketAddr::V4(addr)) => addr,
            other => unreachable!("bound on an IPv4 address: {other:?}"),
        };
        let resolver = Arc::new(Resolver { upstreams, local_names: config.local_names });
        let stop = CancellationToken::new();
        let span = tracing::info_span!("dns", %addr);
        tokio::spawn(serve_udp(Arc::new(udp), resolver.clone(), stop.clone()).instrument(span.clone()));
        tokio::spawn(serve_tcp(tcp, resolver, stop.clone()).instrument(span));
        tracing::info!(%addr, upstream = %config.upstream_resolv_conf.display(), "DNS resolver for instances ready");
        Ok(DnsServer { addr, stop })
    }

    /// Where it listens, on UDP and TCP.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

/// A TCP listener and a UDP socket on the same free port.
async fn bind_pair(ip: Ipv4Addr) -> Result<(TcpListener, UdpSocket), DnsError> {
    let mut last = None;
    for _ in 0..32 {
        let any = SocketAddr::from((ip, 0));
        let tcp = TcpListener::bind(any).await.map_err(|source| DnsError::Bind { addr: any, source })?;
        let addr = tcp.local_addr().map_err(|source| DnsError::Bind { addr: any, source })?;
        match UdpSocket::bind(addr).await {
            Ok(udp) => return Ok((tcp, udp)),
            Err(source) => last = Some(DnsError::Bind { addr, source }),
        }
    }
    Err(last.expect("at least one attempt"))
}

impl Resolver {
    /// The response to `query`, or `None` when it is not even a DNS header (ignored).
    async fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let Some(question) = message::question(query) else {
            return message::id(query).map(|id| message::error_header(id, Rcode::FormErr));
        };
        let local =
            if question.name == METADATA_NAME { Some(METADATA_ADDR) } else { (self.local_names)(&question.name) };
        if let Some(addr) = local {
            let answer = (question.qtype == TYPE_A && message::is_internet(&question)).then_some((addr, LOCAL_TTL));
            tracing::debug!(name = %question.name, qtype = question.qtype, %addr, "answered locally");
            return Some(message::respond(query, &question, answer, Rcode::NoError));
        }
        match self.forward(query, transport).await {
            Ok(response) => {
                tracing::debug!(name = %question.name, qtype = question.qtype, ?transport, "forwarded");
                Some(response)
            }
            Err(e) => {
                tracing::warn!(name = %question.name, error = %e, "forwarding a query failed; answering SERVFAIL");
                Some(message::respond(query, &question, None, Rcode::ServFail))
            }
        }
    }

    /// Tries each upstream in turn; the error is the last one's.
    async fn forward(&self, query: &[u8], transport: Transport) -> Result<Vec<u8>, DnsError> {
        let mut last = None;
        for upstream in self.upstreams.current()? {
            let attempt = match transport {
                Transport::Udp => upstream::forward_udp(upstream, query).await,
                Transport::Tcp => upstream::forward_tcp(upstream, query).await,
            };
            match attempt {
                Ok(response) => return Ok(response),
                Err(e) => {
                    tracing::debug!(error = %e, "upstream failed; trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("parse_resolv_conf returns at least one upstream"))
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, resolver: Arc<Resolver>, stop: CancellationToken) {
    let in_flight = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!(error = %e, "receiving a DNS query failed");
                    continue;
                }
            },
        };
        let query = buf[..n].to_vec();
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many DNS queries in flight; answering SERVFAIL");
            if let Some(q) = message::question(&query) {
                let _ = socket.send_to(&message::respond(&query, &q, None, Rcode::ServFail), peer).await;
            }
            continue;
        };
        let (socket, resolver) = (socket.clone(), resolver.clone());
        tokio::spawn(
            async move {
                if let Some(response) = resolver.answer(&query, Transport::Udp).await {
                    let _ = socket.send_to(&response, peer).await;
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

async fn serve_tcp(listener: TcpListener, resolver: Arc<Resolver>, stop: CancellationToken) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accepting a DNS connection failed");
                    continue;
                }
            },
        };
        let (resolver, stop) = (resolver.clone(), stop.clone());
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    result = serve_tcp_connection(stream, &resolver) => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "DNS connection ended");
                        }
                    }
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

/// Answers length-prefixed queries on one connection until it closes or idles.
async fn serve_tcp_connection(mut stream: TcpStream, resolver: &Resolver) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(result) => result?,
        };
        let mut query = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(response) = resolver.answer(&query, Transport::Tcp).await else { return Ok(()) };
        let len = u16::try_from(response.len()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&response);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver on loopback whose upstream is another socket of this test, also on
    /// loopback: what it answers itself, and what it forwards byte for byte.
    #[tokio::test]
    async fn answers_its_own_names_and_forwards_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        // resolv.conf names no ports (always 53): the end-to-end tests forward through a
        // resolver on port 53; here forwarding is checked at the function level.
        let conf = dir.path().join("resolv.conf");
        std::fs::write(&conf, "nameserver 127.0.0.1\n").unwrap();
        let local_names: LocalNames =
            Arc::new(|name: &str| (name == "hello-p.example.test").then_some(Ipv4Addr::new(169, 254, 1, 2)));
        let server = DnsServer::start(DnsConfig { bind: Ipv4Addr::LOCALHOST, upstream_resolv_conf: conf, local_names })
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(server.addr()).await.unwrap();
        let ask = |name: &'static str, qtype: u16| {
            let client = &client;
            async move {
                client.send(&message::query(9, name, qtype)).await.unwrap();
                let mut buf = vec![0u8; 512];
                let n = client.recv(&mut buf).await.unwrap();
                buf.truncate(n);
                buf
            }
        };
        let metadata = ask("metadata.google.internal", TYPE_A).await;
        assert_eq!(&metadata[metadata.len() - 4..], &[169, 254, 169, 254]);
        let service = ask("HELLO-p.example.test.", TYPE_A).await;
        assert_eq!(&service[service.len() - 4..], &[169, 254, 1, 2]);
        let aaaa = ask("metadata.google.internal", 28).await;
        assert_eq!(&aaaa[6..8], &[0, 0], "no AAAA answer");

        let query = message::query(77, "example.org", TYPE_A);
        let forwarded = tokio::spawn(async move { upstream::forward_udp(upstream_addr, &query).await });
        let mut buf = vec![0u8; 512];
        let (n, from) = upstream.recv_from(&mut buf).await.unwrap();
        assert_eq!(message::question(&buf[..n]).unwrap().name, "example.org");
        let mut reply = buf[..n].to_vec();
        reply[2] |= 0x80;
        upstream.send_to(&reply, from).await.unwrap();
        assert_eq!(forwarded.await.unwrap().unwrap(), reply);
    }

    /// Over TCP, length-prefixed, two queries on one connection.
    #[tokio::test]
    async fn answers_over_tcp_on_the_same_port() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        std::fs::write(&conf, "nameserver 127.0.0.1\n").unwrap();
        let local_names: LocalNames = Arc::new(|_: &str| None);
        let server = DnsServer::start(DnsConfig { bind: Ipv4Addr::LOCALHOST, upstream_resolv_conf: conf, local_names })
            .await
            .unwrap();
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        for id in [1u16, 2] {
            let query = message::query(id, "metadata.google.internal", TYPE_A);
            stream.write_all(&u16::try_from(query.len()).unwrap().to_be_bytes()).await.unwrap();
            stream.write_all(&query).await.unwrap();
            let len = stream.read_u16().await.unwrap();
            let mut response = vec![0u8; usize::from(len)];
            stream.read_exact(&mut response).await.unwrap();
            assert_eq!(message::id(&response), Some(id));
            assert_eq!(&response[response.len() - 4..], &[169, 254, 169, 254]);
        }
    }

    #[tokio::test]
    async fn an_unreadable_upstream_file_is_refused_at_start_naming_it() {
        let local_names: LocalNames = Arc::new(|_: &str| None);
        let missing = PathBuf::from("/nonexistent/wharf/resolv.conf");
        let err = DnsServer::start(DnsConfig { bind: Ipv4Addr::LOCALHOST, upstream_resolv_conf: missing, local_names })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/wharf/resolv.conf"), "{err}");
        assert!(err.to_string().contains("--upstream-resolv-conf"), "{err}");
    }
}
