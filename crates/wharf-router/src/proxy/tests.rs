//! The proxy over real sockets on 127.0.0.1: a tiny HTTP server stands in for an instance.
//! These run in real time (a paused clock would fire the request timeout while bytes are in
//! flight); the only timer they wait for is the 504 test's short request timeout.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::Context;

use super::{accept_loop, add_trace_headers, prepare_headers};
use crate::access::Gate;
use crate::listener::{Listener, ListenerLimits};
use crate::pool::{PoolConfig, RevisionPool, UpstreamProtocol};
use crate::table::{RoutingTable, ServiceRoute};
use crate::testing::{FakeLauncher, config, open_access};

const HOST: &str = "hello.example.com";

/// An instance stand-in answering every request with `name`, except `/hang`, which it never
/// answers. Returns its address.
async fn instance(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                if req.uri().path() == "/hang" {
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(name))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

/// An address that refuses connections: a port that was just bound and released.
async fn refusing() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

/// A running ingress over `table`, stopped when dropped.
struct Ingress {
    addr: SocketAddr,
    /// The IAM database of the ingress's gate, kept until the ingress is dropped.
    _iam_dir: Option<tempfile::TempDir>,
    listener: Arc<Listener>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    shutdown: CancellationToken,
}

impl Ingress {
    async fn start(table: Arc<RoutingTable>) -> Ingress {
        let (dir, iam, _) = crate::testing::iam();
        let mut ingress = Ingress::start_with_gate(table, Gate::new(iam, vec![])).await;
        ingress._iam_dir = Some(dir);
        ingress
    }

    async fn start_with_gate(table: Arc<RoutingTable>, gate: Gate) -> Ingress {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let limits = Listener::new("ingress", ListenerLimits::default());
        tokio::spawn(accept_loop(listener, limits.clone(), table, gate, None, None, shutdown.clone()));
        Ingress {
            addr,
            _iam_dir: None,
            listener: limits,
            client: Client::builder(TokioExecutor::new()).build_http(),
            shutdown,
        }
    }

    /// Sends `GET path` for `host`; returns the status and the body.
    async fn get(&self, host: &str, path: &str) -> (StatusCode, String) {
        let request = Request::get(format!("http://{}{path}", self.addr))
            .header(header::HOST, host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let exchange = async {
            let response = self.client.request(request).await.unwrap();
            let status = response.status();
            (status, response.into_body().collect().await.unwrap().to_bytes())
        };
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("an answer in time");
        (status, String::from_utf8(body.to_vec()).unwrap())
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A pool for one revision whose instances answer at `addr`, routed from [`HOST`].
fn route(
    table: &RoutingTable,
    revision: &str,
    addr: SocketAddr,
    config: PoolConfig,
) -> (Arc<RevisionPool>, FakeLauncher) {
    let launcher = FakeLauncher::instant(addr);
    let pool = RevisionPool::start(revision, config, launcher.arc());
    table.set(
        HOST,
        ServiceRoute { service: "hello".to_owned(), targets: vec![(pool.clone(), 100)], access: open_access() },
    );
    (pool, launcher)
}

#[tokio::test]
async fn a_request_reaches_the_instance_and_its_answer_comes_back() {
    let table = Arc::new(RoutingTable::default());
    route(&table, "hello-00001", instance("hello from 00001").await, config(80, 0, 10));
    let ingress = Ingress::start(table).await;

    assert_eq!(ingress.get(HOST, "/").await, (StatusCode::OK, "hello from 00001".to_owned()));
    assert_eq!(ingress.get("unknown.example.com", "/").await.0, StatusCode::NOT_FOUND);
}

/// A mapped domain is served as its service over plain HTTP until the server has HTTPS for
/// it; then it is redirected (308, path and query kept), except ACME HTTP-01 challenges,
/// which the ingress answers itself for any host while their order is in progress.
#[tokio::test]
async fn mapped_domains_redirect_to_https_and_acme_challenges_are_answered() {
    let table = Arc::new(RoutingTable::default());
    route(&table, "hello-00001", instance("hello").await, config(80, 0, 10));
    table.map_domain("api.example.org", HOST);
    let ingress = Ingress::start(table.clone()).await;
    assert_eq!(ingress.get("api.example.org", "/").await, (StatusCode::OK, "hello".to_owned()));

    table.set_https_policy(Some(crate::table::HttpsPolicy { port: 8443, hsts_max_age: None }));
    let request = Request::get(format!("http://{}/a/b?c=d", ingress.addr))
        .header(header::HOST, "api.example.org:80")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = ingress.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(response.headers()[header::LOCATION], "https://api.example.org:8443/a/b?c=d");
    // The service's own host is not redirected.
    assert_eq!(ingress.get(HOST, "/").await, (StatusCode::OK, "hello".to_owned()));

    let token = "tok-123";
    table.acme_challenges().insert_http01(token, "tok-123.thumbprint");
    let path = format!("/.well-known/acme-challenge/{token}");
    assert_eq!(ingress.get("api.example.org", &path).await, (StatusCode::OK, "tok-123.thumbprint".to_owned()));
    assert_eq!(ingress.get("other.example.net", &path).await, (StatusCode::OK, "tok-123.thumbprint".to_owned()));
    // An unknown token on a mapped domain is not redirected either: it goes to the service.
    let unknown = ingress.get("api.example.org", "/.well-known/acme-challenge/nope").await;
    assert_eq!(unknown, (StatusCode::OK, "hello".to_owned()));
    table.acme_challenges().remove_http01(token);
    assert_eq!(ingress.get("api.example.org", &path).await.0, StatusCode::OK);
    assert_eq!(ingress.get("other.example.net", &path).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_route_change_sends_new_requests_to_the_new_revision() {
    let table = Arc::new(RoutingTable::default());
    route(&table, "hello-00001", instance("old").await, config(80, 0, 10));
    let ingress = Ingress::start(table.clone()).await;
    assert_eq!(ingress.get(HOST, "/").await, (StatusCode::OK, "old".to_owned()));

    route(&table, "hello-00002", instance("new").await, config(80, 0, 10));
    assert_eq!(ingress.get(HOST, "/").await, (StatusCode::OK, "new".to_owned()));
}

#[tokio::test]
async fn a_request_past_its_timeout_gets_504_and_the_instance_is_kept() {
    let table = Arc::new(RoutingTable::default());
    let timeout = PoolConfig { request_timeout: Duration::from_millis(300), ..config(80, 0, 10) };
    let (pool, launcher) = route(&table, "hello-00001", instance("hello").await, timeout);
    let ingress = Ingress::start(table).await;

    let (status, body) = ingress.get(HOST, "/hang").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!((pool.stats().ready, pool.stats().in_flight, launcher.stopped().len()), (1, 0, 0));
    assert_eq!(ingress.get(HOST, "/").await, (StatusCode::OK, "hello".to_owned()));
    assert_eq!(launcher.launches(), 1, "the same instance served the next request");
}

#[tokio::test]
async fn an_upstream_that_refuses_the_connection_gets_502() {
    let table = Arc::new(RoutingTable::default());
    route(&table, "hello-00001", refusing().await, config(80, 0, 10));
    let ingress = Ingress::start(table).await;

    let (status, body) = ingress.get(HOST, "/").await;
    assert_eq!(
        (status, body.trim_end()),
        (StatusCode::BAD_GATEWAY, "The upstream instance failed to answer the request.")
    );
}

/// Clients that disconnect while their request waits for the busy instance, or while it is in
/// flight, give back their queue places and their slot.
#[tokio::test]
async fn clients_that_disconnect_while_queued_or_in_flight_release_their_places() {
    let table = Arc::new(RoutingTable::default());
    let (pool, _launcher) = route(&table, "hello-00001", instance("hello").await, config(1, 0, 1));
    let ingress = Ingress::start(table).await;

    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
        let request = format!("GET /hang HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
        clients.push(stream);
    }
    let settled = async {
        while (pool.stats().in_flight, pool.stats().queued) != (1, 19) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), settled).await.expect("one request in flight, 19 queued");

    drop(clients);
    let released = async {
        while (pool.stats().in_flight, pool.stats().queued) != (0, 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), released).await.expect("disconnects release slot and queue places");
    assert_eq!(ingress.get(HOST, "/").await, (StatusCode::OK, "hello".to_owned()));
}

/// An instance stand-in that accepts every upgrade (`101`) and then echoes what it reads.
async fn upgrading_instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(upgraded) = upgrade.await {
                        let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut read, &mut write).await;
                    }
                });
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("echo"));
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                Ok::<_, std::convert::Infallible>(response)
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::spawn(conn.with_upgrades());
        }
    });
    addr
}

/// An upgraded connection (a WebSocket) that goes quiet is closed after the revision's
/// timeout and gives back its instance slot; one that keeps talking is not cut.
#[tokio::test]
async fn an_idle_upgraded_connection_ends_at_the_request_timeout_and_frees_its_slot() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let table = Arc::new(RoutingTable::default());
    let timeout = PoolConfig { request_timeout: Duration::from_millis(1500), ..config(1, 0, 1) };
    let (pool, _launcher) = route(&table, "hello-00001", upgrading_instance().await, timeout);
    let ingress = Ingress::start(table).await;

    let mut stream = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
    let request = format!("GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the upgrade");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));

    // Talking for longer than the timeout, in steps shorter than it: the splice stays.
    for i in 0..6 {
        let message = format!("ping {i}");
        stream.write_all(message.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], message.as_bytes());
        // Time passing is the point here (a gap shorter than the timeout), not a wait for an event.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(pool.stats().in_flight, 1, "the splice holds the instance slot");
    assert_eq!(ingress.listener.open_connections(), 1, "the upgraded connection counts against the cap");

    // Quiet: the proxy closes both sides and frees the slot.
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
        .await
        .expect("closed when idle")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let freed = async {
        while pool.stats().in_flight > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), freed).await.expect("the slot is given back");
    let closed = async {
        while ingress.listener.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed).await.expect("the connection's place is given back");
}

/// An instance stand-in that speaks only HTTP/2 (prior knowledge): it answers with the version
/// it was spoken to in, the request's `te` header, and a trailer echoing the request's.
async fn h2c_instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let version = format!("{:?}", req.version());
                let te = req.headers().get(header::TE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                let collected = req.into_body().collect().await.unwrap();
                let echoed = collected
                    .trailers()
                    .and_then(|t| t.get("x-request-trailer"))
                    .cloned()
                    .unwrap_or(HeaderValue::from_static("none"));
                let mut trailers = HeaderMap::new();
                trailers.insert("x-response-trailer", echoed);
                let frames = vec![
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(format!(
                        "{version} te={te}"
                    )))),
                    Ok(http_body::Frame::trailers(trailers)),
                ];
                let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                Ok::<_, std::convert::Infallible>(Response::new(body))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A revision whose port is `h2c` gets HTTP/2 from the proxy whatever the client speaks, and
/// trailers (gRPC's status) travel both ways.
#[tokio::test]
async fn an_h2c_revision_is_spoken_to_in_http2_and_trailers_pass_both_ways() {
    let table = Arc::new(RoutingTable::default());
    let h2c = PoolConfig { protocol: UpstreamProtocol::H2c, ..config(80, 0, 10) };
    route(&table, "grpc-00001", h2c_instance().await, h2c);
    let ingress = Ingress::start(table).await;

    // An HTTP/1.1 client.
    assert_eq!(ingress.get(HOST, "/").await, (StatusCode::OK, "HTTP/2.0 te=".to_owned()));

    // An HTTP/2 client sending a trailer and `te: trailers`, as gRPC clients do.
    let client: Client<_, http_body_util::StreamBody<_>> =
        Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let mut request_trailers = HeaderMap::new();
    request_trailers.insert("x-request-trailer", HeaderValue::from_static("from-the-client"));
    let frames = vec![
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"hello"))),
        Ok(http_body::Frame::trailers(request_trailers)),
    ];
    let request = Request::post(format!("http://{}/", ingress.addr))
        .header(header::HOST, HOST)
        .header(header::TE, "trailers")
        .body(http_body_util::StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await.unwrap().unwrap();
    assert_eq!((response.status(), response.version()), (StatusCode::OK, hyper::Version::HTTP_2));
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(trailers.get("x-response-trailer").map(|v| v.to_str().unwrap()), Some("from-the-client"));
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"HTTP/2.0 te=trailers"));
}

/// Records the fields of `request` spans, as they are created and as they are filled in.
#[derive(Debug, Clone, Default)]
struct RequestSpans {
    ids: Arc<Mutex<Vec<tracing::span::Id>>>,
    fields: Arc<Mutex<Vec<(&'static str, String)>>>,
}

impl tracing::field::Visit for &RequestSpans {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.fields.lock().unwrap().push((field.name(), value.to_owned()));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.fields.lock().unwrap().push((field.name(), format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RequestSpans {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "request" {
            self.ids.lock().unwrap().push(id.clone());
            attrs.record(&mut &*self);
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, _: Context<'_, S>) {
        if self.ids.lock().unwrap().contains(id) {
            values.record(&mut &*self);
        }
    }
}

#[tokio::test]
async fn each_request_runs_in_a_span_naming_its_host_revision_and_instance() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let spans = RequestSpans::default();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let table = Arc::new(RoutingTable::default());
    route(&table, "hello-00001", instance("hello").await, config(80, 0, 10));
    let ingress = Ingress::start(table).await;

    assert_eq!(ingress.get(HOST, "/").await.0, StatusCode::OK);
    let mut fields = spans.fields.lock().unwrap().clone();
    let id = fields.remove(0);
    assert_eq!((id.0, id.1.parse::<u64>().is_ok()), ("id", true), "{id:?}");
    let expected = [("host", HOST), ("revision", "hello-00001"), ("instance", "i1")];
    assert_eq!(fields, expected.map(|(name, value)| (name, value.to_owned())));
}

#[test]
fn trace_headers_are_added_and_kept_consistent() {
    let mut h = HeaderMap::new();
    add_trace_headers(&mut h);
    let tp = h["traceparent"].to_str().unwrap().to_owned();
    let trace = tp.split('-').nth(1).unwrap().to_owned();
    assert!(h["x-cloud-trace-context"].to_str().unwrap().starts_with(&format!("{trace}/")));

    let mut h = HeaderMap::new();
    h.insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    add_trace_headers(&mut h);
    assert_eq!(
        h["x-cloud-trace-context"].to_str().unwrap(),
        format!("0af7651916cd43dd8448eb211c80319c/{};o=1", 0xb7ad6b7169203331_u64)
    );
}

#[test]
fn forwarding_headers() {
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    prepare_headers(&mut h, "127.0.0.1:5555".parse().unwrap(), "hello-p.localhost:8080", false, "http");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(!h.contains_key("connection"));
}

/// Sends `GET /private` for [`HOST`] with `headers`; returns the status, the
/// `WWW-Authenticate` header and the body.
async fn get_with(ingress: &Ingress, headers: &[(&str, &str)]) -> (StatusCode, Option<String>, String) {
    let mut request = Request::get(format!("http://{}/private", ingress.addr)).header(header::HOST, HOST);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = ingress.client.request(request.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let status = response.status();
    let challenge = response.headers().get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, challenge, String::from_utf8(body.to_vec()).unwrap())
}

/// A private service (the IAM check on) at [`HOST`], its instance answering "private".
async fn private_service(table: &RoutingTable) -> Arc<crate::access::Access> {
    let access = Arc::new(crate::access::Access {
        resource: wharf_iam::Resource::service("p", "us-central1", "hello"),
        hosts: vec![HOST.to_owned()],
        invoker_iam_disabled: false,
        ingress: crate::access::IngressSetting::All,
    });
    let pool =
        RevisionPool::start("hello-00001", config(80, 0, 10), FakeLauncher::instant(instance("private").await).arc());
    table.set(HOST, ServiceRoute { service: "hello".to_owned(), targets: vec![(pool, 100)], access: access.clone() });
    access
}

#[tokio::test]
async fn a_private_service_wants_a_token_for_its_url_and_the_invoker_permission() {
    use wharf_iam::policy::{Binding, Policy};
    let table = Arc::new(RoutingTable::default());
    let access = private_service(&table).await;
    let (_dir, iam, owner_token) = crate::testing::iam();
    let ingress = Ingress::start_with_gate(table, Gate::new(iam.clone(), vec![])).await;
    let bearer = |token: &str| format!("Bearer {token}");

    // No credentials: 401 with Cloud Run's page and challenge.
    let (status, challenge, body) = get_with(&ingress, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer error="invalid_token" error_description="The access token could not be verified""#)
    );
    assert!(body.contains("<h1>Error: Unauthorized</h1>"), "{body}");
    assert!(body.contains("Your client does not have permission to the requested URL <code>/private</code>."));

    // The owner, by token or by ID token for the service's URL, in either header.
    assert_eq!(get_with(&ingress, &[("authorization", &bearer(&owner_token))]).await.0, StatusCode::OK);
    let (owner_id, _) =
        iam.issuer.sign_id_token(&wharf_iam::Principal::Owner, &format!("http://{HOST}:8080/")).unwrap();
    assert_eq!(get_with(&ingress, &[("authorization", &bearer(&owner_id))]).await.2, "private");
    let both = [("authorization", "Basic app-credentials"), ("x-serverless-authorization", &bearer(&owner_id))];
    assert_eq!(get_with(&ingress, &both).await.0, StatusCode::OK);

    // Not valid: an ID token for another URL, a tampered one, an unknown or expired token.
    let (elsewhere, _) = iam.issuer.sign_id_token(&wharf_iam::Principal::Owner, "http://other.example.com").unwrap();
    let mut tampered = owner_id.clone();
    tampered.replace_range(tampered.len() - 6.., "AAAAAA");
    iam.create_service_account("p", "caller", "", "").unwrap();
    let sa = wharf_iam::Principal::ServiceAccount("caller@p.iam.gserviceaccount.com".into());
    let expired = iam.mint_access_token(&sa, 0).unwrap().token;
    for token in [elsewhere.as_str(), tampered.as_str(), "wharf_not-a-token", expired.as_str()] {
        let (status, _, body) = get_with(&ingress, &[("authorization", &bearer(token))]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}: {body}");
    }

    // A valid caller without run.routes.invoke: 403; with it (on the service): 200.
    let (sa_id, _) = iam.issuer.sign_id_token(&sa, &format!("http://{HOST}")).unwrap();
    let (status, _, body) = get_with(&ingress, &[("authorization", &bearer(&sa_id))]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("Your client does not have permission to get URL <code>/private</code> from this server."));
    let invoker = |members: &[&str]| Policy {
        bindings: vec![Binding {
            role: "roles/run.invoker".into(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            condition: None,
        }],
        ..Policy::default()
    };
    iam.policies.set(&access.resource, &invoker(&[&sa.name()])).unwrap();
    assert_eq!(get_with(&ingress, &[("authorization", &bearer(&sa_id))]).await.0, StatusCode::OK);
    let access_token = iam.mint_access_token(&sa, 600).unwrap().token;
    assert_eq!(get_with(&ingress, &[("authorization", &bearer(&access_token))]).await.0, StatusCode::OK);
    assert_eq!(get_with(&ingress, &[]).await.0, StatusCode::UNAUTHORIZED);

    // allUsers on the project: anyone, without credentials (inherited by the service).
    iam.policies.set(&wharf_iam::Resource::project("p"), &invoker(&["allUsers"])).unwrap();
    assert_eq!(get_with(&ingress, &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn internal_services_answer_loopback_and_instances_only() {
    let (_dir, iam, owner_token) = crate::testing::iam();
    let gate = Gate::new(iam, vec![(std::net::Ipv4Addr::new(10, 213, 0, 0), 16)]);
    let internal = crate::access::Access {
        resource: wharf_iam::Resource::service("p", "us-central1", "hello"),
        hosts: vec![HOST.to_owned()],
        invoker_iam_disabled: true,
        ingress: crate::access::IngressSetting::Internal,
    };
    let headers = HeaderMap::new();
    let from = |ip: [u8; 4]| std::net::IpAddr::from(ip);
    assert_eq!(gate.admit(&internal, &headers, from([127, 0, 0, 1])).unwrap(), None);
    assert_eq!(gate.admit(&internal, &headers, from([10, 213, 4, 9])).unwrap(), None);
    for outside in [[10, 214, 0, 1], [192, 0, 2, 1], [169, 254, 1, 2]] {
        assert!(matches!(gate.admit(&internal, &headers, from(outside)), Err(crate::access::Refusal::NotInternal)));
    }
    // Through the proxy: loopback is internal; the answer for an outsider is the 404 of an
    // unknown host (the end-to-end test sends one from a non-loopback address).
    let table = Arc::new(RoutingTable::default());
    let pool =
        RevisionPool::start("hello-00001", config(80, 0, 10), FakeLauncher::instant(instance("inside").await).arc());
    table.set(
        HOST,
        ServiceRoute { service: "hello".to_owned(), targets: vec![(pool, 100)], access: Arc::new(internal) },
    );
    let (dir2, iam2, _) = crate::testing::iam();
    let ingress = Ingress::start_with_gate(table, Gate::new(iam2, vec![])).await;
    assert_eq!(get_with(&ingress, &[("authorization", &format!("Bearer {owner_token}"))]).await.2, "inside");
    drop(dir2);
}

/// An instance stand-in answering with the `Authorization` header it received.
async fn authorization_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let seen = req.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(seen.unwrap_or_default()))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

#[tokio::test]
async fn the_instance_gets_the_callers_id_token_without_its_signature() {
    let table = Arc::new(RoutingTable::default());
    let access = Arc::new(crate::access::Access {
        resource: wharf_iam::Resource::service("p", "us-central1", "hello"),
        hosts: vec![HOST.to_owned()],
        invoker_iam_disabled: false,
        ingress: crate::access::IngressSetting::All,
    });
    let pool =
        RevisionPool::start("hello-00001", config(80, 0, 10), FakeLauncher::instant(authorization_echo().await).arc());
    table.set(HOST, ServiceRoute { service: "hello".to_owned(), targets: vec![(pool, 100)], access });
    let (_dir, iam, owner_token) = crate::testing::iam();
    let ingress = Ingress::start_with_gate(table, Gate::new(iam.clone(), vec![])).await;

    let (token, _) = iam.issuer.sign_id_token(&wharf_iam::Principal::Owner, &format!("http://{HOST}/")).unwrap();
    let (status, _, seen) = get_with(&ingress, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    let (signed, signature) = token.rsplit_once('.').unwrap();
    assert!(!signature.is_empty());
    assert_eq!(seen, format!("Bearer {signed}."), "the claims arrive, the signature does not");
    // What the instance got is no credential: sent back to the ingress, it is refused.
    let (status, _, _) = get_with(&ingress, &[("authorization", &seen)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An opaque token is passed on as it came (it is not an ID token).
    let (_, _, seen) = get_with(&ingress, &[("authorization", &format!("Bearer {owner_token}"))]).await;
    assert_eq!(seen, format!("Bearer {owner_token}"));
}

/// Hands every record to a channel the test reads.
#[derive(Debug)]
struct Recorder(std::sync::Mutex<tokio::sync::mpsc::UnboundedSender<crate::observe::RequestRecord>>);

impl crate::observe::RequestObserver for Recorder {
    fn observe(&self, record: crate::observe::RequestRecord) {
        let _ = self.0.lock().unwrap().send(record);
    }
}

#[tokio::test]
async fn every_routed_request_is_reported_once_with_its_outcome_and_whether_it_waited_for_a_cold_start() {
    let table = Arc::new(RoutingTable::default());
    let timeout = PoolConfig { request_timeout: Duration::from_millis(500), ..config(80, 0, 10) };
    let owner = crate::observe::PoolOwner {
        project: "p".into(),
        location: "here".into(),
        service: "hello".into(),
        cpu_millis: 1000,
        memory_bytes: 512 << 20,
    };
    let pool =
        RevisionPool::start_owned(owner, "hello-00001", timeout, FakeLauncher::instant(instance("hi").await).arc());
    table.set(HOST, ServiceRoute { service: "hello".to_owned(), targets: vec![(pool, 100)], access: open_access() });
    let (tx, mut records) = tokio::sync::mpsc::unbounded_channel();
    let (_dir, iam, _) = crate::testing::iam();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let observer: Arc<dyn crate::observe::RequestObserver> = Arc::new(Recorder(std::sync::Mutex::new(tx)));
    let limits = Listener::new("ingress", ListenerLimits::default());
    tokio::spawn(accept_loop(listener, limits, table, Gate::new(iam, vec![]), Some(observer), None, shutdown.clone()));
    let ingress = Ingress {
        addr,
        _iam_dir: None,
        listener: Listener::new("unused", ListenerLimits::default()),
        client: Client::builder(TokioExecutor::new()).build_http(),
        shutdown,
    };
    let mut next = async || tokio::time::timeout(Duration::from_secs(10), records.recv()).await.unwrap().unwrap();

    let request = Request::post(format!("http://{addr}/path?q=1"))
        .header(header::HOST, HOST)
        .header(header::USER_AGENT, "probe/1.0")
        .header("x-cloud-trace-context", "0123456789abcdef0123456789abcdef/5;o=1")
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let response = ingress.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    let cold = next().await;
    assert_eq!(
        (cold.service.as_str(), cold.revision.as_str(), cold.owner.project.as_str()),
        ("hello", "hello-00001", "p")
    );
    assert_eq!(
        (cold.method.as_str(), cold.url.as_str(), cold.status),
        ("POST", "http://hello.example.com/path?q=1", 200)
    );
    assert_eq!((cold.request_size, cold.response_size, cold.protocol), (5, 2, "HTTP/1.1"));
    assert_eq!(cold.user_agent.as_deref(), Some("probe/1.0"));
    assert_eq!(cold.trace.as_deref(), Some("0123456789abcdef0123456789abcdef"));
    assert!(cold.cold_start, "the first request of a revision at zero waits for a start");
    assert!(!cold.instance.is_empty());

    assert_eq!(ingress.get(HOST, "/").await, (StatusCode::OK, "hi".to_owned()));
    let warm = next().await;
    assert!(!warm.cold_start && warm.queued.is_zero(), "{warm:?}");
    assert_eq!(warm.trace.as_ref().map(String::len), Some(32), "a trace id is made up when none came");

    assert_eq!(ingress.get(HOST, "/hang").await.0, StatusCode::GATEWAY_TIMEOUT);
    let timed_out = next().await;
    assert_eq!((timed_out.status, timed_out.instance.is_empty()), (504, false));

    assert_eq!(ingress.get("unknown.example.com", "/").await.0, StatusCode::NOT_FOUND);
    assert_eq!(ingress.get(HOST, "/again").await.0, StatusCode::OK);
    assert_eq!(next().await.url, "http://hello.example.com/again", "the unknown host's request was not reported");
}

/// The ingress socket of [`super::bind_ingress`] gets one sibling per worker, and the kernel
/// spreads a burst of connections over them: with one shared socket, the measured burst of 64
/// wrk connections all went to one of two workers.
#[tokio::test]
async fn ingress_workers_each_get_their_own_socket_and_a_share_of_a_burst() {
    let socket = super::bind_ingress("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let sockets = super::worker_sockets(socket.into_std().unwrap(), 2);
    assert_eq!(sockets.len(), 2);
    assert!(sockets.iter().all(|s| s.local_addr().unwrap() == addr));
    let clients: Vec<std::net::TcpStream> = (0..64).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    let mut accepted = Vec::new();
    for socket in &sockets {
        socket.set_nonblocking(true).unwrap();
        let mut count = 0;
        while socket.accept().is_ok() {
            count += 1;
        }
        accepted.push(count);
    }
    // Connections are in the accept queues once connect returns (the handshake is done).
    assert_eq!(accepted.iter().sum::<usize>(), clients.len(), "accepted per socket: {accepted:?}");
    assert!(accepted.iter().all(|&n| n > 0), "one worker got every connection: {accepted:?}");
}

/// `SO_REUSEPORT` would let a second server join the first one's port and take half of its
/// connections: a port that is taken, by a plain socket or another ingress, is refused.
#[tokio::test]
async fn an_ingress_port_already_listened_on_is_refused() {
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = super::bind_ingress(plain.local_addr().unwrap()).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    let first = super::bind_ingress("127.0.0.1:0".parse().unwrap()).unwrap();
    let error = super::bind_ingress(first.local_addr().unwrap()).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "a second ingress joined the first one's port");
}

/// A socket bound without `SO_REUSEPORT` (as the tests' own listeners are) is shared by the
/// workers instead.
#[tokio::test]
async fn a_plain_socket_is_shared_by_the_workers() {
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap().into_std().unwrap();
    let addr = plain.local_addr().unwrap();
    let sockets = super::worker_sockets(plain, 3);
    assert_eq!(sockets.len(), 3);
    let _client = std::net::TcpStream::connect(addr).unwrap();
    sockets[2].set_nonblocking(true).unwrap();
    assert!(sockets[2].accept().is_ok(), "a clone accepts from the one queue");
}

/// An instance stand-in that answers with the request's method, `Host` and body, and counts
/// the connections it accepted.
async fn echoing_instance() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let method = req.method().clone();
                let body = req.into_body().collect().await?.to_bytes();
                let answer = format!("{method} {host} {}", String::from_utf8_lossy(&body));
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (addr, accepted)
}

/// Requests with no body or a small one of known length go through the ingress's own client,
/// which keeps one connection to the instance for requests in turn; a streamed body goes
/// through hyper-util's, whole.
#[tokio::test]
async fn small_requests_share_one_upstream_connection_and_streamed_bodies_still_arrive_whole() {
    let table = Arc::new(RoutingTable::default());
    let (addr, accepted) = echoing_instance().await;
    route(&table, "hello-00001", addr, config(80, 0, 10));
    let ingress = Ingress::start(table).await;

    for _ in 0..5 {
        assert_eq!(ingress.get(HOST, "/").await, (StatusCode::OK, format!("GET {HOST} ")));
    }
    let post = |body: Full<Bytes>| {
        Request::post(format!("http://{}/", ingress.addr)).header(header::HOST, HOST).body(body).unwrap()
    };
    let response = ingress.client.request(post(Full::new(Bytes::from_static(b"ping")))).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], format!("POST {HOST} ping").as_bytes());
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one upstream connection for requests in turn");

    // A body of unannounced length, streamed in chunks: hyper-util's client, on a connection
    // of its own.
    let chunks = futures::stream::iter(["a", "b", "c"].map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from(c)))));
    let streamed = Request::post(format!("http://{}/", ingress.addr))
        .header(header::HOST, HOST)
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(streamed).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], format!("POST {HOST} abc").as_bytes());
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A body still streaming at the request's deadline is cut off as a failure: an HTTP/1.1
/// client of a chunked answer sees the connection end without the last chunk, not an answer
/// that looks whole.
#[tokio::test]
async fn a_body_past_the_deadline_is_cut_off_not_ended() {
    // An instance that sends a head and one chunk, then nothing more.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
                let _ = stream.write_all(answer).await;
                let _ = stream.read(&mut head).await;
            });
        }
    });
    let table = Arc::new(RoutingTable::default());
    let timeout = PoolConfig { request_timeout: Duration::from_millis(300), ..config(80, 0, 10) };
    route(&table, "hello-00001", addr, timeout);
    let ingress = Ingress::start(table).await;

    let request = Request::get(format!("http://{}/", ingress.addr))
        .header(header::HOST, HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = ingress.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await.expect("in time");
    assert!(body.is_err(), "the cut-off body passed for a whole one");
}
