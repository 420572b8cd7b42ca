//! Hostile clients against a real `wharf server`: half-open connections to the ingress, the API
//! and the registry are closed after the header timeout; connections beyond the cap get a 503
//! while open ones keep working; oversized headers get a 431 and oversized API bodies a 413
//! with a google.rpc.Status body; clients that give up while queued for a busy instance leave
//! nothing behind (the instance scales to zero, later requests are served).
//!
//! Every connection goes to the test's own server on 127.0.0.1. Limits are set short through
//! the server's flags (as environment variables); the tests wait for the server's reaction.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use wharf_testsupport::{WharfServer, service_host, testapp_image};

fn wharf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wharf"))
}

/// How long a test waits for any one reaction of the server.
const PATIENCE: Duration = Duration::from_secs(30);

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// Reads until the server closes the connection (EOF or reset); returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read =
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got)).await.expect("the server closes the connection");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends one request on an open keep-alive connection; returns the status line.
async fn exchange(stream: &mut TcpStream, path: &str) -> String {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Wharf's API answers have a content-length; read until the head and that many bytes.
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head.lines().next().unwrap_or_default().to_owned();
            }
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.expect("an answer in time").unwrap();
        assert!(n > 0, "connection closed after {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn half_open_connections_are_closed_after_the_header_timeout_on_every_listener() {
    let server = WharfServer::start_with_env(wharf(), &[("WHARF_HEADER_READ_TIMEOUT", "1s")]).unwrap();
    let listeners = [
        ("ingress", addr(&server.addrs.ingress_addr)),
        ("API", addr(&server.addrs.api_addr)),
        ("registry", addr(&server.addrs.registry_addr)),
    ];
    let mut half_open = Vec::new();
    for (name, addr) in listeners {
        for _ in 0..50 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\nHost: x").await.unwrap();
            half_open.push((name, stream));
        }
    }
    let opened = Instant::now();
    for (name, stream) in &mut half_open {
        let answer = read_to_close(stream).await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{name}: {answer:?}");
    }
    // Nothing else in the test bounds the wait: 150 connections closed well before the 40 s
    // the issue saw them still open.
    assert!(opened.elapsed() < PATIENCE, "{:?}", opened.elapsed());
    let client = wharf_testsupport::http_client().build().unwrap();
    let api = client.get(server.api_url("/wharf/v1/images")).bearer_auth(&server.token).send().await.unwrap();
    assert_eq!(api.status().as_u16(), 200);
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503_while_open_ones_keep_working() {
    let server = WharfServer::start_with_env(wharf(), &[("WHARF_MAX_CONNECTIONS", "4")]).unwrap();
    let api = addr(&server.addrs.api_addr);
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(api).await.unwrap();
        // Unauthenticated: a 401, from the API itself.
        assert_eq!(exchange(&mut stream, "/wharf/v1/images").await, "HTTP/1.1 401 Unauthorized");
        open.push(stream);
    }
    for _ in 0..3 {
        let mut refused = TcpStream::connect(api).await.unwrap();
        refused.write_all(b"GET /wharf/v1/images HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answer = read_to_close(&mut refused).await;
        assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable"), "{answer:?}");
        assert!(answer.contains("too many connections"), "{answer:?}");
    }
    for stream in &mut open {
        assert_eq!(exchange(stream, "/wharf/v1/images").await, "HTTP/1.1 401 Unauthorized");
    }
    drop(open);
    let client = wharf_testsupport::http_client().build().unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        // The closed connections' places come back as the server notices the closes.
        let response = client.get(server.api_url("/wharf/v1/images")).bearer_auth(&server.token).send().await.unwrap();
        if response.status().as_u16() == 200 {
            break;
        }
        assert_eq!(response.status().as_u16(), 503);
        assert!(Instant::now() < deadline, "the listener never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn oversized_headers_get_431_and_oversized_api_bodies_413_with_a_status_body() {
    let server = WharfServer::start_with_env(
        wharf(),
        &[("WHARF_MAX_HEADER_BYTES", "16384"), ("WHARF_MAX_API_BODY_BYTES", "65536")],
    )
    .unwrap();
    let client = wharf_testsupport::http_client().build().unwrap();
    let big = "a".repeat(20_000);
    for url in [format!("http://{}/", server.addrs.ingress_addr), server.api_url("/wharf/v1/images")] {
        let response = client.get(&url).header("x-big", &big).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 431, "{url}");
    }

    let body = serde_json::json!({"template": {"containers": [{"image": "x", "args": ["a".repeat(100_000)]}]}});
    let response = client
        .post(server.api_url("/v2/projects/demo/locations/us-central1/services?serviceId=big"))
        .bearer_auth(&server.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    // The unread body makes the connection unusable: the server says it closes it, so the
    // next request below goes on a new one (before, it raced the close on the reused one).
    assert_eq!(response.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["error"]["code"], 413, "{status}");
    assert_eq!(status["error"]["status"], "INVALID_ARGUMENT", "{status}");
    let message = status["error"]["message"].as_str().unwrap();
    assert!(message.contains("65536 bytes") && message.contains("--max-api-body-bytes"), "{message}");

    // A body under the limit is read and judged on its content.
    let small = serde_json::json!({"template": {"containers": [{"image": "bad image"}]}});
    let response = client
        .post(server.api_url("/v2/projects/demo/locations/us-central1/services?serviceId=small"))
        .bearer_auth(&server.token)
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

/// The leak: clients giving up while queued for a busy `--concurrency 1` instance
/// kept the queue counter raised forever, so the instance never scaled to zero.
#[tokio::test]
async fn a_hundred_abandoned_queued_requests_leave_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let built = testapp_image(work.path(), "v1").unwrap();
    let server =
        WharfServer::start_with_env(wharf(), &[("WHARF_IDLE_TIMEOUT", "2s"), ("WHARF_METRICS_ADDR", "127.0.0.1:0")])
            .unwrap();
    let out = server.cli(&["images", "import", &built.layout.to_string_lossy(), "--tag", "testapp:v1"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = format!("{}/testapp:v1", server.addrs.registry_addr);
    let out = server
        .cli(&[
            "run",
            "deploy",
            "queue",
            "--image",
            &image,
            "--project",
            "demo",
            "--concurrency",
            "1",
            "--max-instances",
            "1",
            "--timeout",
            "300",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let instances = || std::fs::read_dir(server.data_dir().join("instances")).map(|d| d.count()).unwrap_or(0);
    let ingress = addr(&server.addrs.ingress_addr);
    let queue_host = service_host("queue", "demo");
    let token = &server.token;
    let request =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {queue_host}\r\nAuthorization: Bearer {token}\r\n\r\n");

    // One request holds the only instance; 100 more queue behind it.
    let mut holder = TcpStream::connect(ingress).await.unwrap();
    holder.write_all(request("/sleep?ms=300000").as_bytes()).await.unwrap();
    // The holder's request is the one that started the instance: once the instance exists, it
    // is ahead of every request sent from now on (on a loaded machine a later connection
    // could otherwise be read first and take the instance).
    wharf_testsupport::wait_until("the holder's instance", Duration::from_secs(30), || {
        (instances() == 1).then_some(())
    })
    .unwrap();
    // ... and once the holder has it (the instance active, nothing queued): the queue holds
    // 100, so 100 more requests fit only once the holder has left it.
    let metrics =
        format!("http://{}/metrics", server.addrs.metrics_addr.clone().expect("server.json names metricsAddr"));
    let scraper = wharf_testsupport::http_client().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scraper.get(&metrics).send().await.unwrap().text().await.unwrap();
        let value = |name: &str, extra: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains("service_name=\"queue\"") && l.contains(extra))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        if value("wharf_run_container_instances{", "state=\"active\"") == Some(1.0)
            && value("wharf_run_pending_requests{", "") == Some(0.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the holder was not served in 30 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut queued = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(ingress).await.unwrap();
        stream.write_all(request("/").as_bytes()).await.unwrap();
        queued.push(stream);
    }
    // None of them is answered while the instance is held (the queue waits up to 10 s).
    let mut probe = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), queued[99].read(&mut probe)).await;
    assert!(early.is_err(), "a queued request was answered while the only instance was busy");
    // The clients give up.
    drop(queued);
    drop(holder);

    let deadline = Instant::now() + Duration::from_secs(90);
    while instances() > 0 {
        assert!(Instant::now() < deadline, "the instance never scaled to zero after the clients left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = server.client_builder().timeout(PATIENCE).build().unwrap();
    for _ in 0..3 {
        let response = client.get(format!("http://{ingress}/")).header("Host", &queue_host).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(response.text().await.unwrap().starts_with("Hello from queue-00001-"));
    }
}
