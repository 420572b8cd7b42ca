//! The listener against misbehaving clients, over real sockets on 127.0.0.1, in real time with
//! short limits: each test waits for the server's reaction (an answer, a close), never sleeps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{Listener, ListenerLimits};

/// How long any test waits for a reaction before failing.
const PATIENCE: Duration = Duration::from_secs(20);

/// A listener answering every request `200 hello`, stopped when dropped.
struct Server {
    addr: SocketAddr,
    listener: Arc<Listener>,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn server(limits: ListenerLimits) -> Server {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = Listener::new("test", limits);
    let shutdown = CancellationToken::new();
    tokio::spawn(listener.clone().serve(socket, shutdown.clone(), |_remote| {
        hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("hello"))))
        })
    }));
    Server { addr, listener, shutdown }
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read =
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got)).await.expect("the server closes the connection");
    if let Err(e) = read {
        // A reset after a timeout is a close too; anything received before it still counts.
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends one complete request and reads the whole answer (the request asks to close).
async fn get(addr: SocketAddr, extra_headers: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra_headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_to_close(&mut stream).await
}

/// Sends one request on an open keep-alive connection; returns the status line.
async fn exchange(stream: &mut TcpStream) -> String {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).ends_with("hello") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.expect("an answer in time").unwrap();
        assert!(n > 0, "connection closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_owned()
}

fn short_header_timeout() -> ListenerLimits {
    ListenerLimits { header_read_timeout: Duration::from_millis(300), ..ListenerLimits::default() }
}

#[tokio::test]
async fn a_request_whose_headers_never_end_is_closed_after_the_header_timeout() {
    let server = server(short_header_timeout()).await;
    let mut half_open = TcpStream::connect(server.addr).await.unwrap();
    half_open.write_all(b"GET / HTTP/1.1\r\nHost: x").await.unwrap();
    let answer = read_to_close(&mut half_open).await;
    // hyper answers a header timeout with a 408 or closes; either way the socket is gone.
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(get(server.addr, "").await.lines().next(), Some("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let server = server(short_header_timeout()).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(read_to_close(&mut silent).await, "");
    let closed = async {
        while server.listener.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, closed).await.expect("the connection's place is given back");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let limits = ListenerLimits { idle_timeout: Duration::from_millis(300), ..ListenerLimits::default() };
    let server = server(limits).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(exchange(&mut stream).await, "HTTP/1.1 200 OK");
    assert_eq!(read_to_close(&mut stream).await, "");
}

#[tokio::test]
async fn headers_over_the_limit_get_431() {
    let limits = ListenerLimits { max_header_bytes: 8192, ..ListenerLimits::default() };
    let server = server(limits).await;
    let big = format!("X-Big: {}\r\n", "a".repeat(10_000));
    let answer = get(server.addr, &big).await;
    assert_eq!(answer.lines().next(), Some("HTTP/1.1 431 Request Header Fields Too Large"), "{answer:?}");
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let limits = ListenerLimits { max_headers: 10, ..ListenerLimits::default() };
    let server = self::server(limits).await;
    let answer = get(server.addr, &many).await;
    assert_eq!(answer.lines().next(), Some("HTTP/1.1 431 Request Header Fields Too Large"), "{answer:?}");
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503_while_open_ones_keep_working() {
    let limits = ListenerLimits { max_connections: 2, ..ListenerLimits::default() };
    let server = server(limits).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(exchange(&mut first).await, "HTTP/1.1 200 OK");
    assert_eq!(exchange(&mut second).await, "HTTP/1.1 200 OK");

    let refused = get(server.addr, "").await;
    assert_eq!(refused.lines().next(), Some("HTTP/1.1 503 Service Unavailable"), "{refused:?}");
    assert_eq!(exchange(&mut first).await, "HTTP/1.1 200 OK");

    drop(first);
    drop(second);
    let freed = async {
        while server.listener.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, freed).await.expect("closed connections give their places back");
    assert_eq!(get(server.addr, "").await.lines().next(), Some("HTTP/1.1 200 OK"));
}

#[test]
fn limits_out_of_range_are_refused_naming_the_setting() {
    let too_long = ListenerLimits { header_read_timeout: Duration::from_secs(31), ..ListenerLimits::default() };
    assert_eq!(too_long.validate().unwrap_err().setting, "header-read-timeout");
    let too_small = ListenerLimits { max_header_bytes: 100, ..ListenerLimits::default() };
    assert_eq!(too_small.validate().unwrap_err().setting, "max-header-bytes");
    let none = ListenerLimits { max_connections: 0, ..ListenerLimits::default() };
    assert_eq!(none.validate().unwrap_err().setting, "max-connections");
    assert_eq!(ListenerLimits::default().validate().map_err(|e| e.to_string()), Ok(()));
}
