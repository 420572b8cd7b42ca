//! The ingress server: accepts HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on one port,
//! routes each request by Host to a revision (weighted), takes a slot on one of its instances,
//! and forwards the request with streamed bodies (and trailers), `X-Forwarded-*` and trace
//! headers, over HTTP/1.1 or, to revisions whose port is `h2c`, over HTTP/2 (so gRPC,
//! bidirectional streams included, works end to end; a client's reset stream or dropped
//! connection cancels the upstream stream). WebSocket
//! (and other) upgrades are spliced through, until both sides close or neither sends a byte for
//! the revision's timeout. The revision's timeout bounds each request: past
//! it the client gets a 504 and the instance keeps serving. Each request runs in a debug span
//! (`request`: its number, host, revision and instance).
//!
//! Every request routed to a service is reported once, when its response ends, as a
//! [`RequestRecord`] to the server's [`RequestObserver`] (request logs and metrics): the
//! record is filled in along the way and handed over by the response body's drop, so the
//! hot path does no I/O for it.
//!
//! It does not choose instances nor scale them (the revision's [`crate::pool`] does), and it
//! answers failures only through [`ProxyError`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, Span};

use crate::access::{Gate, Refusal};
use crate::error::ProxyError;
use crate::listener::{ConnectionPlace, Listener};
use crate::observe::{PoolOwner, RequestObserver, RequestRecord};
use crate::pool::{Lease, UpstreamProtocol};
use crate::table::RoutingTable;

mod http1;
#[cfg(test)]
mod tests;

/// A response body as the ingress sends it.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Why a response body broke off.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the ingress reports each request, if anywhere.
pub type Observer = Option<Arc<dyn RequestObserver>>;

/// Serves the ingress on `socket` until `shutdown`, with the connection limits of `listener`
/// (see [`crate::listener`]).
///
/// Like nginx's workers, one thread per core runs its own single-threaded runtime and accepts
/// from the shared socket: a connection, its requests and their upstream connections stay
/// on one thread, so a proxied request costs no cross-thread wake-ups. Routing state (the
/// table, the pools) and the connection cap are shared between threads.
pub async fn serve(
    socket: TcpListener,
    listener: Arc<Listener>,
    table: Arc<RoutingTable>,
    gate: Gate,
    observer: Observer,
    shutdown: CancellationToken,
) {
    serve_on(socket, listener, table, gate, observer, None, shutdown).await;
}

/// Serves the ingress over TLS on `socket` (see [`crate::tls`]): the same proxy, with
/// `X-Forwarded-Proto: https`; ALPN decides between HTTP/2 and HTTP/1.1.
pub async fn serve_tls(
    socket: TcpListener,
    listener: Arc<Listener>,
    table: Arc<RoutingTable>,
    gate: Gate,
    observer: Observer,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    serve_on(socket, listener, table, gate, observer, Some(tokio_rustls::TlsAcceptor::from(tls)), shutdown).await;
}

async fn serve_on(
    socket: TcpListener,
    listener: Arc<Listener>,
    table: Arc<RoutingTable>,
    gate: Gate,
    observer: Observer,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let socket = match socket.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "ingress listener unusable");
            return;
        }
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut workers = Vec::new();
    for (i, socket) in worker_sockets(socket, threads).into_iter().enumerate() {
        let (listener, table, gate, observer, tls, shutdown) =
            (listener.clone(), table.clone(), gate.clone(), observer.clone(), tls.clone(), shutdown.clone());
        let worker = std::thread::Builder::new().name(format!("wharf-ingress-{i}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start an ingress worker");
                    return;
                }
            };
            runtime.block_on(async move {
                match TcpListener::from_std(socket) {
                    Ok(socket) => accept_loop(socket, listener, table, gate, observer, tls, shutdown).await,
                    Err(e) => tracing::error!(error = %e, "ingress worker cannot listen"),
                }
            });
        });
        match worker {
            Ok(handle) => workers.push(handle),
            Err(e) => tracing::error!(error = %e, "cannot spawn an ingress worker"),
        }
    }
    shutdown.cancelled().await;
    let _ = tokio::task::spawn_blocking(move || {
        for worker in workers {
            let _ = worker.join();
        }
    })
    .await;
}

/// Binds an ingress socket on `addr` (port 0 for any free one) that every worker thread can
/// listen on with a socket of its own, `SO_REUSEPORT`: the kernel then spreads new
/// connections evenly over the workers. Sharing one socket instead lets the first thread to
/// wake accept a whole burst of connections (measured: all 64 of wrk's on one of two threads,
/// the other idle). Must be called within a tokio runtime.
///
/// A port another process listens on is refused (`AddrInUse`), as a plain bind would: a
/// plain bind is tried first, since with `SO_REUSEPORT` alone a second server of the same
/// user would silently join the first one's group and take half its connections.
pub fn bind_ingress(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    listen_shared(addr)
}

/// A listening socket on `addr` with `SO_REUSEPORT`, joining the other sockets on it.
fn listen_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Pending connections each listening socket queues.
const LISTEN_BACKLOG: u32 = 1024;

/// One listening socket per worker: `socket`, and siblings bound to its address with
/// `SO_REUSEPORT` when it was bound by [`bind_ingress`]; otherwise (a socket bound without
/// it) clones of `socket`, from which the workers accept in turn.
fn worker_sockets(socket: std::net::TcpListener, threads: usize) -> Vec<std::net::TcpListener> {
    let mut sockets = Vec::with_capacity(threads);
    let addr = socket.local_addr();
    for _ in 1..threads {
        let next = match &addr {
            Ok(addr) => listen_shared(*addr).and_then(TcpListener::into_std).or_else(|_| socket.try_clone()),
            Err(_) => socket.try_clone(),
        };
        match next {
            Ok(next) => sockets.push(next),
            Err(e) => {
                tracing::error!(error = %e, "cannot share the ingress listener");
                break;
            }
        }
    }
    sockets.insert(0, socket);
    sockets
}

/// Accepts and serves connections on this thread until `shutdown`, then lets open
/// connections finish (up to 10 s).
async fn accept_loop(
    socket: TcpListener,
    listener: Arc<Listener>,
    table: Arc<RoutingTable>,
    gate: Gate,
    observer: Observer,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let http1: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector.clone());
    // One multiplexed HTTP/2 connection per instance; the pool's leases bound its streams.
    let h2c: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_adaptive_window(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let forwarded_proto = if tls.is_some() { "https" } else { "http" };
    let own_http1 = http1::Http1Client::default();
    let reaper = {
        let (own_http1, shutdown) = (own_http1.clone(), shutdown.clone());
        async move {
            let mut every = tokio::time::interval(http1::IDLE_TIMEOUT / 3);
            loop {
                tokio::select! {
                    _ = every.tick() => own_http1.close_expired(),
                    () = shutdown.cancelled() => return,
                }
            }
        }
    };
    tokio::spawn(reaper);
    let proxy = Arc::new(Proxy { table, gate, own_http1, http1, h2c, forwarded_proto, observer });
    let make_service = move |remote| {
        let proxy = proxy.clone();
        hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, remote).await) }
        })
    };
    match tls {
        None => listener.serve(socket, shutdown, make_service).await,
        Some(acceptor) => listener.serve_tls(socket, acceptor, shutdown, make_service).await,
    }
}

struct Proxy {
    table: Arc<RoutingTable>,
    gate: Gate,
    /// To instances of revisions whose port is `http1`, for requests with no body or a small
    /// one of announced length (most): see [`http1`].
    own_http1: http1::Http1Client,
    /// To instances of revisions whose port is `http1` for the other requests (streamed
    /// bodies), and for upgrades (WebSocket) to any.
    http1: Client<HttpConnector, Incoming>,
    /// To instances of revisions whose port is `h2c`: HTTP/2 with prior knowledge.
    h2c: Client<HttpConnector, Incoming>,
    /// `X-Forwarded-Proto` for the instance: how the client reached the ingress.
    forwarded_proto: &'static str,
    observer: Observer,
}

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Proxy {
    /// Answers one request, within a span naming it (a per-process request number), its host,
    /// and once known its revision and instance. The span costs nothing when debug tracing is
    /// off: its fields are only computed when it is enabled.
    async fn handle(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<ProxyBody> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_owned();
        let span = tracing::debug_span!(
            "request",
            id = next_request_id(),
            host = %host,
            revision = tracing::field::Empty,
            instance = tracing::field::Empty,
        );
        if let Some(response) = self.edge_answer(&req, &host) {
            return response;
        }
        if self.forwarded_proto == "https"
            && let Some(site) = self.table.local_site(&host)
        {
            return serve_local_site(site.as_ref(), req, remote, &host).instrument(span).await;
        }
        let hsts = self.hsts(&host);
        let grpc = is_grpc(req.headers());
        let mut trail = self.observer.as_ref().map(|observer| Trail::begin(observer.clone(), &req, &host, remote));
        let forward = async {
            match self.forward(req, remote, host, &span, grpc, &mut trail).await {
                Ok(response) => response,
                Err(e) => {
                    let response = if grpc { e.into_grpc_response() } else { e.into_response() };
                    if let Some(trail) = trail {
                        let size = response.body().size_hint().exact().unwrap_or(0);
                        trail.finish(response.status().as_u16(), size);
                    }
                    response
                }
            }
        };
        let mut response = forward.instrument(span.clone()).await;
        if let Some(value) = hsts {
            response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, value);
        }
        response
    }

    /// What the plain HTTP ingress answers itself: an ACME HTTP-01 challenge in progress
    /// (whatever the host), and for a mapped domain served over HTTPS, a 308 to HTTPS.
    fn edge_answer(&self, req: &Request<Incoming>, host: &str) -> Option<Response<ProxyBody>> {
        if self.forwarded_proto != "http" {
            return None;
        }
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix(crate::acme::HTTP01_PREFIX) {
            if let Some(key_authorization) = self.table.acme_challenges().http01(token) {
                tracing::debug!(%host, "answered an ACME http-01 challenge");
                return Some(text_response(StatusCode::OK, key_authorization));
            }
            return None;
        }
        let policy = self.table.https_policy()?;
        if !self.table.is_mapped_domain(host) {
            return None;
        }
        let name = host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host, |(h, _)| h);
        let authority = if policy.port == 443 { name.to_owned() } else { format!("{name}:{}", policy.port) };
        let target = format!("https://{authority}{}", req.uri().path_and_query().map_or("/", |p| p.as_str()));
        let mut response = text_response(StatusCode::PERMANENT_REDIRECT, format!("Moved to {target}\n"));
        if let Ok(location) = HeaderValue::from_str(&target) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Some(response)
    }

    /// The HSTS header for a mapped domain's HTTPS responses, when the server sets one.
    fn hsts(&self, host: &str) -> Option<HeaderValue> {
        if self.forwarded_proto != "https" {
            return None;
        }
        let max_age = self.table.https_policy()?.hsts_max_age?;
        if !self.table.is_mapped_domain(host) {
            return None;
        }
        HeaderValue::from_str(&format!("max-age={max_age}")).ok()
    }
}

/// Hands a request for the server's own site over, with the ingress's forwarding headers in
/// place of any the client sent, and `Host` set from the HTTP/2 `:authority` when absent.
async fn serve_local_site(
    site: &dyn crate::site::LocalSite,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    host: &str,
) -> Response<ProxyBody> {
    let headers = req.headers_mut();
    for name in ["x-forwarded-proto", "x-forwarded-for", "x-forwarded-host", "forwarded"] {
        headers.remove(name);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    if let Ok(client) = HeaderValue::from_str(&remote.ip().to_string()) {
        headers.insert("x-forwarded-for", client);
    }
    if !headers.contains_key(header::HOST)
        && let Ok(value) = HeaderValue::from_str(host)
    {
        headers.insert(header::HOST, value);
    }
    tracing::debug!(%host, "served by the server's own site");
    site.serve(req, remote).await
}

fn text_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response =
        Response::new(http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

impl Proxy {
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        host: String,
        span: &Span,
        grpc: bool,
        trail: &mut Option<Trail>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Some(route) = self.table.lookup(&host) else {
            // No service: nothing to report the request under.
            *trail = None;
            return Err(ProxyError::UnknownHost { host });
        };
        if let Some(trail) = trail {
            trail.record.service.clone_from(&route.service);
            if let Some((pool, _)) = route.targets.first() {
                trail.record.owner = pool.owner().clone();
            }
        }
        match self.gate.admit(&route.access, req.headers(), remote.ip()) {
            Ok(Some(_caller)) => crate::access::strip_id_token_signature(req.headers_mut()),
            Ok(None) => {}
            Err(Refusal::NotInternal) => {
                // Answered as if no service had the host: not the service's request.
                *trail = None;
                return Err(ProxyError::UnknownHost { host });
            }
            Err(refusal) => return Err(ProxyError::Refused { refusal, path: req.uri().path().to_owned() }),
        }
        let roll = if route.targets.len() > 1 { fast_random() % 100 } else { 0 };
        let pool = route.pick(u32::try_from(roll).unwrap_or(0)).ok_or(ProxyError::NoRevision)?.clone();
        span.record("revision", pool.revision.as_str());
        if let Some(trail) = trail {
            trail.record.revision.clone_from(&pool.revision);
            trail.record.owner = pool.owner().clone();
        }
        let timeout = pool.request_timeout();
        // One timer per request: it bounds the wait for an instance, the response head, and
        // then the body.
        let mut deadline = Box::pin(tokio::time::sleep(timeout));
        let affinity = pool.session_affinity();
        let preferred = if affinity { affinity_cookie(req.headers(), &pool.revision) } else { None };
        let lease = match pool.try_acquire(preferred.as_deref()) {
            Some(lease) => lease,
            None => {
                let waited_from = tokio::time::Instant::now();
                let lease = tokio::select! {
                    lease = pool.acquire() => lease?,
                    _ = deadline.as_mut() => return Err(ProxyError::Timeout(timeout)),
                };
                if let Some(trail) = trail {
                    trail.record.queued = waited_from.elapsed();
                    trail.record.cold_start = lease.instance_joined() >= waited_from;
                }
                lease
            }
        };
        span.record("instance", lease.upstream().id());
        if let Some(trail) = trail {
            trail.record.instance = lease.upstream().id().to_owned();
        }

        let upgrade = is_upgrade(req.headers());
        // An upgrade (WebSocket) is an HTTP/1.1 mechanism: it goes to the instance over
        // HTTP/1.1 even when the revision serves h2c (a server that only speaks HTTP/2 answers
        // it with an error, which the client gets as a 502).
        let http2 = pool.protocol == UpstreamProtocol::H2c && !upgrade;
        let client_version = req.version();
        let own_client = !http2 && !upgrade && fits_own_client(&req);
        let (mut parts, body) = if own_client {
            let send = self.send_own(req, remote, &host, &lease, trail);
            let response = tokio::select! {
                response = send => response?,
                _ = deadline.as_mut() => return Err(ProxyError::Timeout(timeout)),
            };
            let (parts, body) = response.into_parts();
            (parts, InstanceBody::Own(body))
        } else {
            let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            let place = req.extensions_mut().remove::<ConnectionPlace>();
            let (mut parts, body) = req.into_parts();
            let mut uri = hyper::http::uri::Parts::default();
            uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
            uri.authority = Some(lease.authority().clone());
            uri.path_and_query =
                Some(parts.uri.path_and_query().cloned().unwrap_or_else(|| "/".parse().expect("valid")));
            parts.uri =
                hyper::Uri::from_parts(uri).map_err(|e| ProxyError::Upstream(format!("bad upstream URI: {e}")))?;
            parts.version = if http2 { hyper::Version::HTTP_2 } else { hyper::Version::HTTP_11 };
            let trace = prepare_headers(&mut parts.headers, remote, &host, upgrade, self.forwarded_proto);
            // An HTTP/2 client names the host in `:authority` only: the instance gets it as
            // `Host` (not the instance's own address, which hyper-util would put there), as
            // from the own client.
            if !http2
                && !parts.headers.contains_key(header::HOST)
                && let Ok(value) = HeaderValue::from_str(&host)
            {
                parts.headers.insert(header::HOST, value);
            }
            if let Some(trail) = trail {
                trail.record.trace = Some(trace);
            }
            let upstream = Request::from_parts(parts, body);
            let client = if http2 { &self.h2c } else { &self.http1 };

            let mut response = tokio::select! {
                response = client.request(upstream) => response.map_err(|e| ProxyError::Upstream(e.to_string()))?,
                _ = deadline.as_mut() => return Err(ProxyError::Timeout(timeout)),
            };

            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_upgrade) = client_upgrade
            {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                let splice = splice(client_upgrade, upstream_upgrade, lease, timeout);
                tokio::spawn(
                    async move {
                        splice.await;
                        // The upgraded stream counted against the listener's cap until now.
                        drop(place);
                    }
                    .instrument(span.clone()),
                );
                let (parts, _) = response.into_parts();
                if let Some(trail) = trail.take() {
                    trail.finish(StatusCode::SWITCHING_PROTOCOLS.as_u16(), 0);
                }
                return Ok(Response::from_parts(
                    parts,
                    http_body_util::Empty::new().map_err(|never| match never {}).boxed(),
                ));
            }
            let (parts, body) = response.into_parts();
            (parts, InstanceBody::Hyper(body))
        };
        // The client's connection decides the version it is answered in (an HTTP/1.1 client
        // of an h2c revision gets HTTP/1.1).
        parts.version = client_version;
        for name in HOP_BY_HOP {
            parts.headers.remove(*name);
        }
        if affinity && preferred.as_deref() != Some(lease.upstream().id()) {
            let cookie = format!(
                "{AFFINITY_COOKIE}={}.{}; Path=/; HttpOnly; Max-Age=2592000",
                pool.revision,
                lease.upstream().id()
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                parts.headers.append(header::SET_COOKIE, v);
            }
        }
        let report = trail.take().map(|mut trail| {
            trail.record.status = parts.status.as_u16();
            trail
        });
        let body = LeasedBody { inner: body, _lease: lease, deadline, timeout, grpc, ended: false, report };
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// Sends a request with [`http1::Http1Client`]: reads its (small) body, writes it to the
    /// leased instance with the forwarding headers, and reads the response head.
    async fn send_own(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        host: &str,
        lease: &Lease,
        trail: &mut Option<Trail>,
    ) -> Result<Response<http1::UpstreamBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let body = if body.is_end_stream() {
            Bytes::new()
        } else {
            http_body_util::Limited::new(body, http1::MAX_BUFFERED_BODY)
                .collect()
                .await
                .map_err(|e| ProxyError::ClientBody(e.to_string()))?
                .to_bytes()
        };
        let trace = prepare_headers(&mut parts.headers, remote, host, false, self.forwarded_proto);
        if let Some(trail) = trail {
            trail.record.trace = Some(trace);
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let request = http1::encode_request(&parts.method, path, &parts.headers, host, &body);
        self.own_http1.send(lease.upstream(), &request).await.map_err(|e| ProxyError::Upstream(e.to_string()))
    }
}

/// Whether [`http1::Http1Client`] can send this request: not a CONNECT (whose answer turns
/// the connection into a tunnel), and a body that is empty, or announced with a length it may
/// read whole first.
fn fits_own_client(req: &Request<Incoming>) -> bool {
    if req.method() == hyper::Method::CONNECT {
        return false;
    }
    if req.body().is_end_stream() {
        return true;
    }
    let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    announced.is_some_and(|length| length <= http1::MAX_BUFFERED_BODY)
}

/// An instance's response body, from whichever client fetched it.
enum InstanceBody {
    Hyper(Incoming),
    Own(http1::UpstreamBody),
}

impl Body for InstanceBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            InstanceBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            InstanceBody::Own(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InstanceBody::Hyper(body) => body.is_end_stream(),
            InstanceBody::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            InstanceBody::Hyper(body) => body.size_hint(),
            InstanceBody::Own(body) => body.size_hint(),
        }
    }
}

/// A number for each proxied request, unique within the process, to tell requests apart in
/// traces.
fn next_request_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The session affinity cookie: `wharf-affinity={revision}.{instance}`.
const AFFINITY_COOKIE: &str = "wharf-affinity";

/// The instance a client's affinity cookie names, if it is for `revision`.
fn affinity_cookie(headers: &HeaderMap, revision: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(AFFINITY_COOKIE)?.strip_prefix('='))
        .find_map(|value| value.strip_prefix(revision)?.strip_prefix('.').map(str::to_owned))
}

/// A gRPC call (any `application/grpc` content type: `+proto`, `+json`, ...).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Strips hop-by-hop headers (keeping an upgrade's, and `TE: trailers`, which says the client
/// takes trailers: gRPC servers want it, and the proxy forwards trailers), and adds
/// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and trace context.
/// Returns the request's trace id.
fn prepare_headers(
    headers: &mut HeaderMap,
    remote: SocketAddr,
    host: &str,
    upgrade: bool,
    proto: &'static str,
) -> String {
    let upgrade_header = headers.get(header::UPGRADE).cloned();
    let takes_trailers =
        headers.get_all(header::TE).iter().filter_map(|v| v.to_str().ok()).any(|v| {
            v.split(',').any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")))
        });
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    if takes_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade && let Some(value) = upgrade_header {
        headers.insert(header::UPGRADE, value);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", remote.ip()),
        None => remote.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.entry(HeaderName::from_static("x-forwarded-host")).or_insert(v);
    }
    add_trace_headers(headers)
}

/// Makes sure both W3C `traceparent` and Google's `X-Cloud-Trace-Context` are present and
/// name the same trace; returns the trace id (32 hex digits).
fn add_trace_headers(headers: &mut HeaderMap) -> String {
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let cloud = headers.get("x-cloud-trace-context").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let parsed_parent = traceparent.as_deref().and_then(|t| {
        let parts: Vec<&str> = t.split('-').collect();
        (parts.len() == 4 && parts[1].len() == 32 && parts[2].len() == 16)
            .then(|| (parts[1].to_owned(), parts[2].to_owned()))
    });
    let parsed_cloud = cloud.as_deref().and_then(|c| {
        let (trace, rest) = c.split_once('/')?;
        let span: u64 = rest.split(';').next()?.parse().ok()?;
        (trace.len() == 32).then(|| (trace.to_owned(), format!("{span:016x}")))
    });
    let (trace, span) = parsed_parent.clone().or(parsed_cloud.clone()).unwrap_or_else(|| {
        (format!("{:016x}{:016x}", fast_random(), fast_random()), format!("{:016x}", fast_random() | 1))
    });
    if parsed_parent.is_none()
        && let Ok(v) = HeaderValue::from_str(&format!("00-{trace}-{span}-01"))
    {
        headers.insert(HeaderName::from_static("traceparent"), v);
    }
    if parsed_cloud.is_none() {
        let span_decimal = u64::from_str_radix(&span, 16).unwrap_or(1);
        if let Ok(v) = HeaderValue::from_str(&format!("{trace}/{span_decimal};o=1")) {
            headers.insert(HeaderName::from_static("x-cloud-trace-context"), v);
        }
    }
    trace
}

/// A fast per-thread pseudo-random number (xorshift64*), seeded once from the OS: for traffic
/// splits and trace ids, where a syscall per request would cost more than the rest of routing.
fn fast_random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(u64::from_le_bytes(*uuid::Uuid::new_v4().as_bytes().first_chunk().unwrap_or(&[7; 8])) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Copies bytes both ways between an upgraded client and instance connection; the lease
/// (the instance's concurrency slot) is held until both sides close, or until no byte has
/// moved either way for `idle_timeout` (the revision's request timeout), when both are closed.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    lease: Lease,
    idle_timeout: Duration,
) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else { return };
    let activity = Arc::new(SpliceActivity::default());
    let mut client = ActivityIo { inner: TokioIo::new(client), activity: activity.clone() };
    let mut upstream = ActivityIo { inner: TokioIo::new(upstream), activity: activity.clone() };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = activity.idle_for(idle_timeout) => {
            tracing::debug!(timeout = ?idle_timeout, "closing an idle upgraded connection");
        }
    }
    drop(lease);
}

/// Counts bytes read on either side of a splice, so that an idle splice can be told apart.
#[derive(Debug, Default)]
struct SpliceActivity {
    bytes: AtomicU64,
}

impl SpliceActivity {
    /// Resolves once a whole `timeout` passes with no byte read on either side.
    async fn idle_for(&self, timeout: Duration) {
        let mut seen = self.bytes.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(timeout).await;
            let now = self.bytes.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    }
}

/// An upgraded connection that records what it reads in its splice's [`SpliceActivity`].
struct ActivityIo<T> {
    inner: T,
    activity: Arc<SpliceActivity>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity.bytes.fetch_add(read as u64, Ordering::Relaxed);
        }
        result
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for ActivityIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that holds its instance slot until the body ends, and is cut off at the
/// request's deadline: a gRPC call's then ends with trailers saying DEADLINE_EXCEEDED (its
/// client sees why), any other body fails (the client sees a cut-off answer, not a whole one).
struct LeasedBody {
    inner: InstanceBody,
    _lease: Lease,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    grpc: bool,
    /// The deadline passed and the body was ended.
    ended: bool,
    /// The request's record, finished and reported when the body is dropped.
    report: Option<Trail>,
}

impl Drop for LeasedBody {
    fn drop(&mut self) {
        if let Some(trail) = self.report.take() {
            let (status, sent) = (trail.record.status, trail.sent);
            trail.finish(status, sent);
        }
    }
}

/// A request's [`RequestRecord`] while it is being served: filled in by `forward` as the
/// route, revision, instance and trace are known, and reported once by [`Trail::finish`].
struct Trail {
    observer: Arc<dyn RequestObserver>,
    started: std::time::Instant,
    record: RequestRecord,
    /// Response body bytes sent so far.
    sent: u64,
}

impl Trail {
    fn begin(observer: Arc<dyn RequestObserver>, req: &Request<Incoming>, host: &str, remote: SocketAddr) -> Trail {
        let header =
            |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let scheme = req.uri().scheme_str().unwrap_or("http");
        let protocol = match req.version() {
            hyper::Version::HTTP_09 => "HTTP/0.9",
            hyper::Version::HTTP_10 => "HTTP/1.0",
            hyper::Version::HTTP_2 => "HTTP/2",
            hyper::Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        };
        Trail {
            observer,
            started: std::time::Instant::now(),
            record: RequestRecord {
                received: std::time::SystemTime::now(),
                owner: Arc::new(PoolOwner::default()),
                service: String::new(),
                revision: String::new(),
                instance: String::new(),
                method: req.method().as_str().to_owned(),
                url: format!("{scheme}://{host}{path}"),
                status: 0,
                latency: Duration::ZERO,
                request_size: header(header::CONTENT_LENGTH).and_then(|v| v.parse().ok()).unwrap_or(0),
                response_size: 0,
                user_agent: header(header::USER_AGENT),
                referer: header(header::REFERER),
                remote_ip: remote.ip(),
                protocol,
                trace: None,
                queued: Duration::ZERO,
                cold_start: false,
            },
            sent: 0,
        }
    }

    fn finish(mut self, status: u16, response_size: u64) {
        self.record.status = status;
        self.record.response_size = response_size;
        self.record.latency = self.started.elapsed();
        self.observer.observe(self.record);
    }
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            // Past the timeout mid-body (the status line is already sent): a gRPC call ends
            // with its status in trailers; any other body fails, so the client's connection
            // or stream is cut and the answer cannot pass for a whole one.
            self.ended = true;
            if self.grpc {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from(u16::from(crate::error::GRPC_DEADLINE_EXCEEDED)));
                let message = ProxyError::Timeout(self.timeout).to_string();
                if let Ok(v) = HeaderValue::from_str(&crate::error::grpc_message(&message)) {
                    trailers.insert("grpc-message", v);
                }
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(Some(Err(ProxyError::Timeout(self.timeout).into())));
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Some(trail), Poll::Ready(Some(Ok(frame)))) = (self.report.as_mut(), &frame)
            && let Some(data) = frame.data_ref()
        {
            trail.sent += data.len() as u64;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
