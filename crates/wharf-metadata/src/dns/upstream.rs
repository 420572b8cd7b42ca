//! The resolvers Wharf forwards to: the `nameserver` lines of a resolv.conf (the host's by
//! default), re-read whenever the file changes, wherever they are (loopback and private
//! addresses included: the forwarding happens on the host, outside the egress policy).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

use super::DnsError;

/// How long one upstream may take to answer one query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many resolvers are tried per query, as glibc does (MAXNS).
const MAX_UPSTREAMS: usize = 3;

#[derive(Debug)]
pub struct Upstreams {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, Vec<SocketAddr>)>,
}

/// The `nameserver` addresses of a resolv.conf text (port 53), at most [`MAX_UPSTREAMS`];
/// none means the resolver on the local machine, as for glibc.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut found: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            let addr = addr.split_once('%').map_or(addr, |(a, _)| a); // scope ids are not kept
            addr.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
        })
        .take(MAX_UPSTREAMS)
        .collect();
    if found.is_empty() {
        found.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 53));
    }
    found
}

impl Upstreams {
    pub fn new(path: &Path) -> Upstreams {
        Upstreams { path: path.to_owned(), cached: Mutex::new((None, Vec::new())) }
    }

    /// The resolvers to try, in order; an unreadable file is an error naming it.
    pub fn current(&self) -> Result<Vec<SocketAddr>, DnsError> {
        let read_error = |source| DnsError::ResolvConf { path: self.path.clone(), source };
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).map_err(read_error)?;
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != Some(modified) {
            let text = std::fs::read_to_string(&self.path).map_err(read_error)?;
            *cached = (Some(modified), parse_resolv_conf(&text));
            tracing::debug!(path = %self.path.display(), upstreams = ?cached.1, "read upstream resolvers");
        }
        Ok(cached.1.clone())
    }
}

/// Sends `query` to `upstream` over UDP from a fresh socket (so only that upstream's answer
/// to this query can arrive) and returns its response.
pub async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> Result<Vec<u8>, DnsError> {
    let failed = |source| DnsError::Upstream { upstream, source };
    let bind: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
    let socket = UdpSocket::bind(bind).await.map_err(failed)?;
    socket.connect(upstream).await.map_err(failed)?;
    socket.send(query).await.map_err(failed)?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
            .await
            .map_err(|_| DnsError::UpstreamTimeout { upstream })?
            .map_err(failed)?;
        // Anything not answering this query's ID is ignored.
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// Sends `query` to `upstream` over TCP (length-prefixed, RFC 1035 4.2.2).
pub async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> Result<Vec<u8>, DnsError> {
    let failed = |source| DnsError::Upstream { upstream, source };
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await.map_err(failed)?;
        let len = u16::try_from(query.len()).map_err(|_| failed(std::io::ErrorKind::InvalidInput.into()))?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(failed)?;
        let len = stream.read_u16().await.map_err(failed)?;
        let mut response = vec![0u8; usize::from(len)];
        stream.read_exact(&mut response).await.map_err(failed)?;
        Ok(response)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await.map_err(|_| DnsError::UpstreamTimeout { upstream })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_in_order_with_scope_ids_dropped() {
        let text = "# comment\nsearch example.com\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\n\
                    nameserver 127.0.0.53\nnameserver 9.9.9.9\noptions edns0\n";
        let found: Vec<String> = parse_resolv_conf(text).iter().map(ToString::to_string).collect();
        assert_eq!(found, ["10.255.255.53:53", "[fe80::1]:53", "127.0.0.53:53"]);
    }

    #[test]
    fn no_nameserver_means_the_local_machine() {
        assert_eq!(parse_resolv_conf("search x\n"), vec![SocketAddr::from(([127, 0, 0, 1], 53))]);
    }
}
