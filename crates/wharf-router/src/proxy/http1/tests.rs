//! The client against scripted instances on 127.0.0.1: each accepted connection follows a
//! script of exact bytes to answer, so framing, reuse and failures are tested byte for byte.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::{Http1Client, UpstreamError, encode_request};
use crate::testing::FakeUpstream;
use crate::upstream::Upstream;

/// What an instance does with one request on a connection.
#[derive(Clone)]
enum Step {
    /// Reads a request head (and nothing more), then writes these pieces one by one.
    Answer(Vec<&'static [u8]>),
    /// Reads a request head, then closes the connection without a word.
    CloseAfterRequest,
    /// Closes the connection at once.
    Close,
}

/// A scripted instance: connection `n` (from 0) plays `scripts[n]`, step by step, then closes;
/// connections past the scripts are closed at once. Returns the instance and a count of the
/// connections it accepted.
async fn scripted(scripts: Vec<Vec<Step>>) -> (Arc<dyn Upstream>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let script = scripts.get(n).cloned().unwrap_or_default();
            tokio::spawn(play(stream, script));
        }
    });
    let instance: Arc<dyn Upstream> = FakeUpstream::new("i-1", addr);
    (instance, accepted)
}

async fn play(mut stream: TcpStream, script: Vec<Step>) {
    let mut pending = Vec::new();
    for step in script {
        if let Step::Close = step {
            return;
        }
        // Read up to the end of one request head.
        while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        let end = pending.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        pending.drain(..end);
        match step {
            Step::Answer(pieces) => {
                for piece in pieces {
                    stream.write_all(piece).await.unwrap();
                    stream.flush().await.unwrap();
                }
            }
            Step::CloseAfterRequest | Step::Close => return,
        }
    }
    // Keep the connection open until the client closes it.
    let _ = stream.read(&mut [0u8; 1]).await;
}

fn get() -> super::Outgoing {
    encode_request(&Method::GET, "/", &HeaderMap::new(), "hello.example.com", b"")
}

const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

/// Sends `request` and reads the whole response: status, body, trailers.
async fn fetch(
    client: &Http1Client,
    instance: &Arc<dyn Upstream>,
    request: &super::Outgoing,
) -> Result<(StatusCode, Bytes, Option<HeaderMap>), UpstreamError> {
    let response = client.send(instance, request).await?;
    let status = response.status();
    let collected = response.into_body().collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((status, collected.to_bytes(), trailers))
}

#[test]
fn requests_are_encoded_with_host_and_their_real_length() {
    let mut headers = HeaderMap::new();
    headers.insert("content-length", HeaderValue::from_static("999"));
    headers.insert("expect", HeaderValue::from_static("100-continue"));
    headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    let request = encode_request(&Method::POST, "/a?b=c", &headers, "hello.example.com", b"body");
    assert_eq!(
        String::from_utf8(request.bytes).unwrap(),
        "POST /a?b=c HTTP/1.1\r\nx-forwarded-for: 10.0.0.1\r\nhost: hello.example.com\r\ncontent-length: 4\r\n\r\nbody"
    );
    // A body-less POST still says its length; a GET says nothing of one.
    let empty = encode_request(&Method::POST, "/", &HeaderMap::new(), "h", b"");
    assert!(String::from_utf8(empty.bytes).unwrap().contains("content-length: 0\r\n"));
    let get = encode_request(&Method::GET, "/", &HeaderMap::new(), "h", b"");
    assert_eq!(String::from_utf8(get.bytes).unwrap(), "GET / HTTP/1.1\r\nhost: h\r\n\r\n");
    // One Host, the first (the one routing used); cookie fields on one line.
    let mut headers = HeaderMap::new();
    headers.append("host", HeaderValue::from_static("app.example.com"));
    headers.append("host", HeaderValue::from_static("evil.example.com"));
    headers.append("cookie", HeaderValue::from_static("a=1"));
    headers.append("cookie", HeaderValue::from_static("b=2"));
    let get = encode_request(&Method::GET, "/", &headers, "h", b"");
    assert_eq!(
        String::from_utf8(get.bytes).unwrap(),
        "GET / HTTP/1.1\r\nhost: app.example.com\r\ncookie: a=1; b=2\r\n\r\n"
    );
}

#[tokio::test]
async fn one_connection_serves_requests_in_turn() {
    let (instance, accepted) = scripted(vec![vec![
        Step::Answer(vec![HELLO]),
        // The head and body in pieces, the body split inside.
        Step::Answer(vec![b"HTTP/1.1 200 OK\r\ncontent-le", b"ngth: 5\r\n\r\nhe", b"llo"]),
        Step::Answer(vec![HELLO]),
    ]])
    .await;
    let client = Http1Client::default();
    for _ in 0..3 {
        let (status, body, _) = fetch(&client, &instance, &get()).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        assert_eq!(client.idle_count(), 1);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_bodies_are_decoded_with_their_trailers() {
    let (instance, accepted) = scripted(vec![vec![
        Step::Answer(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"5;ext=1\r\nhel",
            b"lo\r\n",
            b"7\r\n, world\r\n0\r\ngrpc-status: 0\r\nx-end: ",
            b"yes\r\n\r\n",
        ]),
        Step::Answer(vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0003\r\nabc\r\n0\r\n\r\n"]),
    ]])
    .await;
    let client = Http1Client::default();
    let (_, body, trailers) = fetch(&client, &instance, &get()).await.unwrap();
    assert_eq!(&body[..], b"hello, world");
    let trailers = trailers.expect("the trailers are forwarded");
    assert_eq!(
        (&trailers["grpc-status"], &trailers["x-end"]),
        (&HeaderValue::from(0), &HeaderValue::from_static("yes"))
    );
    // Without trailers (and a size with leading zeros), on the same connection.
    let (_, body, trailers) = fetch(&client, &instance, &get()).await.unwrap();
    assert_eq!((&body[..], trailers), (&b"abc"[..], None));
    assert_eq!((accepted.load(Ordering::SeqCst), client.idle_count()), (1, 1));
}

#[tokio::test]
async fn a_body_without_length_ends_at_the_close_and_the_connection_is_not_kept() {
    let (instance, _) = scripted(vec![vec![Step::Answer(vec![b"HTTP/1.1 200 OK\r\n\r\nall of it"])]]).await;
    let client = Http1Client::default();
    // The scripted instance closes after its last step's read, which ends when the client
    // closes: so this response would never end if the client waited for a length.
    let response = client.send(&instance, &get()).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"all of it");
    drop(body);
    assert_eq!(client.idle_count(), 0);
}

#[tokio::test]
async fn bodiless_answers_and_interim_responses_keep_the_connection() {
    let (instance, accepted) = scripted(vec![vec![
        Step::Answer(vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"]),
        Step::Answer(vec![b"HTTP/1.1 304 Not Modified\r\ncontent-length: 12\r\n\r\n"]),
        Step::Answer(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n"]),
    ]])
    .await;
    let client = Http1Client::default();
    let (status, body, _) = fetch(&client, &instance, &get()).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    let (status, body, _) = fetch(&client, &instance, &get()).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    let head = encode_request(&Method::HEAD, "/", &HeaderMap::new(), "h", b"");
    let (status, body, _) = fetch(&client, &instance, &head).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!((accepted.load(Ordering::SeqCst), client.idle_count()), (1, 1));
}

#[tokio::test]
async fn connection_close_http10_and_faulty_framing_are_not_pooled() {
    let (instance, accepted) = scripted(vec![
        vec![Step::Answer(vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"])],
        vec![Step::Answer(vec![b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"])],
        // A transfer coding in HTTP/1.0, and one beside a length: faulty framing (RFC 9112).
        vec![Step::Answer(vec![
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ])],
        vec![Step::Answer(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ])],
        vec![Step::Answer(vec![HELLO])],
    ])
    .await;
    let client = Http1Client::default();
    for expected_length in [Some("2"), Some("2"), None, None, Some("5")] {
        let response = client.send(&instance, &get()).await.unwrap();
        // The coding decides the body's end; a length beside it never reaches the client.
        let length = response.headers().get("content-length").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(length.as_deref(), expected_length);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body == "ok" || body == "hello", "{body:?}");
    }
    assert_eq!((accepted.load(Ordering::SeqCst), client.idle_count()), (5, 1));
}

#[test]
fn chunk_sizes_are_hex_digits_then_extensions() {
    use super::parse_chunk_size;
    for (line, size) in
        [("a", 10), ("0005", 5), ("5 ;name=value", 5), ("5;x", 5), ("000000000000000000000000ff", 255), ("0", 0)]
    {
        assert_eq!(parse_chunk_size(line.as_bytes()).unwrap(), size, "{line:?}");
    }
    for line in ["", "+a", " 5", "5 x", "\u{a0}5", "-1", "11111111111111111", "5\r"] {
        assert!(parse_chunk_size(line.as_bytes()).is_err(), "{line:?} was accepted");
    }
}

/// Two connections that each answer once, then drop the next request; then one that answers.
fn twice_answered_once_then_dropping() -> Vec<Vec<Step>> {
    let dropping = vec![Step::Answer(vec![HELLO]), Step::CloseAfterRequest];
    vec![dropping.clone(), dropping, vec![Step::Answer(vec![HELLO])]]
}

#[tokio::test]
async fn a_pooled_connection_the_instance_dropped_is_replaced() {
    // The first connection answers once, then closes after reading the next request: a GET
    // is sent again on a new connection; a POST is not (the instance may have acted on it).
    let (instance, accepted) = scripted(twice_answered_once_then_dropping()).await;
    let client = Http1Client::default();
    fetch(&client, &instance, &get()).await.unwrap();
    let (status, body, _) = fetch(&client, &instance, &get()).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    let post = encode_request(&Method::POST, "/", &HeaderMap::new(), "h", b"once");
    let error = fetch(&client, &instance, &post).await.unwrap_err();
    assert!(matches!(error, UpstreamError::ClosedBeforeAnswer), "{error}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_is_sent_again_once_at_most_and_on_a_new_connection() {
    // Two pooled connections that both drop the next request: the GET that meets the first
    // goes to a new connection, not to the other pooled one.
    let (instance, accepted) = scripted(twice_answered_once_then_dropping()).await;
    let client = Http1Client::default();
    // Two at once, so that two connections are opened and pooled.
    let request = get();
    let (a, b) = tokio::join!(client.send(&instance, &request), client.send(&instance, &request));
    let (a, b) = (a.unwrap().into_body().collect(), b.unwrap().into_body().collect());
    let (a, b) = tokio::join!(a, b);
    a.unwrap();
    b.unwrap();
    assert_eq!(client.idle_count(), 2);
    let (status, _, _) = fetch(&client, &instance, &get()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!((accepted.load(Ordering::SeqCst), client.idle_count()), (3, 2));
}

#[tokio::test]
async fn an_idle_connection_closed_by_the_instance_is_never_used() {
    // The instance closes its side after answering: the client sees the close while the
    // connection is idle and opens a new one, whatever the method.
    let (instance, accepted) =
        scripted(vec![vec![Step::Answer(vec![HELLO]), Step::Close], vec![Step::Answer(vec![HELLO])]]).await;
    let client = Http1Client::default();
    fetch(&client, &instance, &get()).await.unwrap();
    // Wait for the close to reach the pooled connection (its readiness is what the client
    // checks), and put it back.
    let pooled = client.idle.lock().unwrap().get_mut(&instance.addr()).unwrap().pop().unwrap();
    pooled.stream.readable().await.unwrap();
    client.idle.lock().unwrap().get_mut(&instance.addr()).unwrap().push(pooled);

    let post = encode_request(&Method::POST, "/", &HeaderMap::new(), "h", b"x");
    let (status, _, _) = fetch(&client, &instance, &post).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn broken_answers_are_errors_and_their_connections_are_dropped() {
    let huge_header: &'static [u8] =
        Box::leak(format!("x-big: {}\r\n", "a".repeat(70_000)).into_bytes().into_boxed_slice());
    let (instance, _) = scripted(vec![
        vec![Step::Answer(vec![b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"])],
        vec![Step::Answer(vec![b"HTTP/1.1 200 OK\r\n", huge_header])],
        vec![Step::Answer(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc"])],
        vec![Step::Answer(vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"])],
        vec![Step::Answer(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"]), Step::Close],
    ])
    .await;
    let client = Http1Client::default();
    let error = fetch(&client, &instance, &get()).await.unwrap_err();
    assert!(matches!(error, UpstreamError::Malformed(_)), "{error}");
    let error = fetch(&client, &instance, &get()).await.unwrap_err();
    assert!(matches!(error, UpstreamError::HeadTooLarge), "{error}");
    let error = fetch(&client, &instance, &get()).await.unwrap_err();
    assert!(error.to_string().contains("Content-Length headers that disagree"), "{error}");
    let error = fetch(&client, &instance, &get()).await.unwrap_err();
    assert!(error.to_string().contains("chunk size"), "{error}");
    // A body cut short by the close: the head arrived, the body fails.
    let response = client.send(&instance, &get()).await.unwrap();
    let error = response.into_body().collect().await.unwrap_err();
    assert!(matches!(error, UpstreamError::Truncated), "{error}");
    assert_eq!(client.idle_count(), 0);
}
