//! The protections every Wharf listener (ingress, admin API, registry) puts between a client
//! and the handler: an accept loop that caps concurrent connections and backs off when the
//! process runs out of file descriptors, and per-connection limits: a header-read timeout, an
//! idle timeout, and header size limits for HTTP/1 and HTTP/2. The limits are one
//! [`ListenerLimits`], set by server flags.
//!
//! Beyond [`ListenerLimits::max_connections`] a connection is accepted, answered
//! `503 Service Unavailable` with `Connection: close` (plain HTTP/1.1, whatever it sent) and
//! closed; the ones already open keep working. Accepting (rather than leaving new connections
//! in the kernel's backlog) lets a client see at once why it is refused. The refusals
//! themselves are bounded ([`MAX_REFUSALS_IN_PROGRESS`]); past that, connections are closed
//! without an answer.
//!
//! A TLS listener ([`Listener::serve_tls`]) first completes the handshake, within
//! [`ListenerLimits::tls_handshake_timeout`], while the connection already holds its place
//! under the cap; a handshake that fails or is too slow closes the connection.
//!
//! Idle means "no request in flight": a connection with none is closed once
//! [`ListenerLimits::header_read_timeout`] passes without a first request, and once
//! [`ListenerLimits::idle_timeout`] passes after its last response ended. For HTTP/1, hyper's
//! header-read timer also runs while a keep-alive connection waits for its next request, so an
//! idle HTTP/1 connection lasts at most the shorter of the two. HTTP/2 connections get a GOAWAY.
//!
//! It does not limit request bodies (what a body may hold is the handler's business: the API
//! caps JSON bodies, the proxy streams them within the revision's timeout) nor what happens
//! after an HTTP/1 upgrade (the proxy's splice has its own idle timeout). An upgraded
//! connection outlives hyper's connection, so each request carries the connection's place
//! under the cap ([`ConnectionPlace`], a request extension) for the handler of an upgrade to
//! keep for as long as the upgraded stream lives.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The smallest header limit HTTP/1 parsing accepts (hyper's minimum read buffer).
pub const MIN_HEADER_BYTES: usize = 8192;

/// The longest header-read timeout a server may be configured with.
pub const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How many refused connections may be in the middle of getting their 503 at once.
pub const MAX_REFUSALS_IN_PROGRESS: usize = 256;

/// How long to wait before accepting again after an accept failed for lack of resources
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM): the accept would fail again at once, in a spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a connection may take to finish once the server asked it to close (shutdown,
/// idle): past it, it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Limits of one listener. Defaults suit a server facing untrusted clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerLimits {
    /// How long a client may take to send a request's headers, and to send its first request
    /// after connecting (at most [`MAX_HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight is kept open after its last response.
    pub idle_timeout: Duration,
    /// How many connections the listener serves at once; more are refused with a 503.
    pub max_connections: usize,
    /// The most bytes a request's headers may take (HTTP/1: the request line and headers,
    /// at least [`MIN_HEADER_BYTES`]; HTTP/2: the header list). More gets a 431.
    pub max_header_bytes: usize,
    /// The most headers an HTTP/1 request may have. More gets a 431.
    pub max_headers: usize,
    /// How long a TLS client may take to complete its handshake (at most
    /// [`MAX_HEADER_READ_TIMEOUT`]).
    pub tls_handshake_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> ListenerLimits {
        ListenerLimits {
            header_read_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 128,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A limit that cannot be used, named by the setting that holds it.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {problem}")]
pub struct LimitsError {
    pub setting: &'static str,
    pub problem: String,
}

impl ListenerLimits {
    /// Checks every limit is usable, naming the first that is not.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let bad = |setting, problem: String| Err(LimitsError { setting, problem });
        if self.header_read_timeout.is_zero() || self.header_read_timeout > MAX_HEADER_READ_TIMEOUT {
            return bad(
                "header-read-timeout",
                format!(
                    "is {:?}; it must be more than 0 and at most {}s",
                    self.header_read_timeout,
                    MAX_HEADER_READ_TIMEOUT.as_secs()
                ),
            );
        }
        if self.idle_timeout.is_zero() {
            return bad("connection-idle-timeout", "must be more than 0".to_owned());
        }
        if self.max_connections == 0 {
            return bad("max-connections", "must be at least 1".to_owned());
        }
        if self.max_header_bytes < MIN_HEADER_BYTES || u32::try_from(self.max_header_bytes).is_err() {
            return bad(
                "max-header-bytes",
                format!("is {}; it must be between {MIN_HEADER_BYTES} and {}", self.max_header_bytes, u32::MAX),
            );
        }
        if self.max_headers == 0 {
            return bad("max-headers", "must be at least 1".to_owned());
        }
        if self.tls_handshake_timeout.is_zero() || self.tls_handshake_timeout > MAX_HEADER_READ_TIMEOUT {
            return bad(
                "tls-handshake-timeout",
                format!(
                    "is {:?}; it must be more than 0 and at most {}s",
                    self.tls_handshake_timeout,
                    MAX_HEADER_READ_TIMEOUT.as_secs()
                ),
            );
        }
        Ok(())
    }
}

/// One listening socket's connection budget and limits, shared by every thread accepting on
/// it (the ingress accepts on one thread per core).
#[derive(Debug)]
pub struct Listener {
    /// Names the listener in logs ("ingress", "API", "registry").
    name: &'static str,
    limits: ListenerLimits,
    connections: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    /// Accepting is failing: logged once until an accept succeeds again.
    accept_failing: AtomicBool,
    /// The connection cap was hit: logged once until a connection is served again.
    at_capacity: AtomicBool,
}

impl Listener {
    /// Panics if `limits` do not [`ListenerLimits::validate`] (the server validates them
    /// when it reads its flags).
    pub fn new(name: &'static str, limits: ListenerLimits) -> Arc<Listener> {
        if let Err(e) = limits.validate() {
            panic!("invalid listener limits for the {name}: {e}");
        }
        Arc::new(Listener {
            name,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_PROGRESS)),
            limits,
            accept_failing: AtomicBool::new(false),
            at_capacity: AtomicBool::new(false),
        })
    }

    pub fn limits(&self) -> &ListenerLimits {
        &self.limits
    }

    /// Connections being served right now.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections - self.connections.available_permits()
    }

    /// Accepts on `socket` and serves each connection with the service `make_service` builds
    /// for its peer, until `shutdown`; then asks open connections to finish and waits for them
    /// (up to 10 s). Several tasks may accept on clones of one socket with the same
    /// `Listener`: they share its connection cap.
    pub async fn serve<M, S, B>(self: Arc<Self>, socket: TcpListener, shutdown: CancellationToken, make_service: M)
    where
        M: Fn(SocketAddr) -> S,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.accept(socket, None, shutdown, make_service).await;
    }

    /// As [`Listener::serve`], over TLS: each connection completes its handshake with
    /// `acceptor` (within the handshake timeout) before it is served.
    pub async fn serve_tls<M, S, B>(
        self: Arc<Self>,
        socket: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        shutdown: CancellationToken,
        make_service: M,
    ) where
        M: Fn(SocketAddr) -> S,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.accept(socket, Some(acceptor), shutdown, make_service).await;
    }

    async fn accept<M, S, B>(
        self: Arc<Self>,
        socket: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: CancellationToken,
        make_service: M,
    ) where
        M: Fn(SocketAddr) -> S,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tasks = tokio_util::task::TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                accepted = socket.accept() => accepted,
                _ = shutdown.cancelled() => break,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => {
                    if self.accept_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(listener = self.name, "accepting connections again");
                    }
                    accepted
                }
                Err(error) => {
                    self.accept_failed(&error).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                self.refuse(stream, &tasks);
                continue;
            };
            if self.at_capacity.swap(false, Ordering::Relaxed) {
                tracing::info!(listener = self.name, "below the connection limit again");
            }
            let _ = stream.set_nodelay(true);
            let service = make_service(remote);
            match &tls {
                None => {
                    tasks.spawn(self.clone().serve_connection(stream, service, permit, shutdown.clone()));
                }
                Some(acceptor) => {
                    let (listener, acceptor, shutdown) = (self.clone(), acceptor.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        let timeout = listener.limits.tls_handshake_timeout;
                        let stream = tokio::select! {
                            handshake = tokio::time::timeout(timeout, acceptor.accept(stream)) => match handshake {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(listener = listener.name, %remote, %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(listener = listener.name, %remote, "TLS handshake timed out");
                                    return;
                                }
                            },
                            _ = shutdown.cancelled() => return,
                        };
                        if stream.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
                            // TLS-ALPN-01 validation: the handshake was the answer; no HTTP follows.
                            tracing::debug!(listener = listener.name, %remote, "answered an acme-tls/1 validation");
                            return;
                        }
                        listener.serve_connection(stream, service, permit, shutdown).await;
                    });
                }
            }
        }
        tasks.close();
        let _ = tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(1), tasks.wait()).await;
    }

    /// Logs an accept failure (once until accepting works again) and, when the process or
    /// machine is out of descriptors or memory, waits before the next try.
    async fn accept_failed(&self, error: &io::Error) {
        let out_of_resources = matches!(
            error.raw_os_error(),
            Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
        );
        if !self.accept_failing.swap(true, Ordering::Relaxed) {
            if out_of_resources {
                tracing::warn!(
                    listener = self.name, %error,
                    "cannot accept connections (out of file descriptors or memory); retrying every {}ms",
                    ACCEPT_BACKOFF.as_millis()
                );
            } else {
                tracing::warn!(listener = self.name, %error, "accepting a connection failed");
            }
        }
        if out_of_resources {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }

    /// Answers a connection over the cap with a 503 and closes it, reading what the client
    /// sent (for at most a second) so that the close does not turn into a reset.
    fn refuse(&self, mut stream: TcpStream, tasks: &tokio_util::task::TaskTracker) {
        if !self.at_capacity.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                listener = self.name,
                max_connections = self.limits.max_connections,
                "connection limit reached; refusing new connections with 503"
            );
        }
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else { return };
        tasks.spawn(async move {
            const BODY: &str = "too many connections to this server; retry later\n";
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
                 content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
                BODY.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                stream.write_all(answer.as_bytes()).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, io::Error>(())
            })
            .await;
            drop(permit);
        });
    }

    /// Serves one connection with the limits, holding its place under the cap until it ends.
    async fn serve_connection<I, S, B>(
        self: Arc<Self>,
        stream: I,
        service: S,
        permit: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limits = &self.limits;
        let activity = Arc::new(Activity::new());
        let place = ConnectionPlace(Arc::new(permit));
        let service = Tracked { inner: service, activity: activity.clone(), place };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
            .max_headers(limits.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let idle = activity.idle(limits.header_read_timeout, limits.idle_timeout);
        tokio::pin!(idle);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.cancelled() => {}
            first = idle.as_mut() => {
                if first {
                    // Never sent a request: nothing to finish gracefully.
                    tracing::debug!(listener = self.name, "closing a connection that sent no request in time");
                    return;
                }
                tracing::debug!(listener = self.name, "closing an idle connection");
            }
        }
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
    }
}

/// errno values of the accept failures that mean "out of resources" (Linux).
mod libc_errno {
    pub const EMFILE: i32 = 24;
    pub const ENFILE: i32 = 23;
    pub const ENOBUFS: i32 = 105;
    pub const ENOMEM: i32 = 12;
}

/// What a connection is doing: requests in flight (a request counts until its response body
/// ends or is dropped) and since when it has had none.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    served_any: AtomicBool,
    idle_since: Mutex<Instant>,
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            served_any: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            changed: Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.served_any.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Resolves when the connection has been idle too long: `true` if it never started a
    /// request (within `first_request`), `false` if it went idle after one (for `idle`).
    async fn idle(&self, first_request: Duration, idle: Duration) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            let served_any = self.served_any.load(Ordering::Relaxed);
            let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
            let deadline = since + if served_any { idle } else { first_request };
            if tokio::time::timeout_at(deadline, changed).await.is_err()
                && self.in_flight.load(Ordering::SeqCst) == 0
                && *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) == since
            {
                return !served_any;
            }
        }
    }
}

/// One request in flight on a connection; dropping it (the response body ended or was
/// dropped, or the request was cancelled) may make the connection idle.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        self.0.changed.notify_one();
    }
}

/// A connection's place under its listener's cap, held until every holder drops it. Each
/// request carries one (an extension); whoever serves an upgrade keeps it for the upgraded
/// stream's life, so upgraded connections count against the cap too.
#[derive(Debug, Clone)]
pub struct ConnectionPlace(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// A service that counts its requests in the connection's [`Activity`] and hands each the
/// connection's [`ConnectionPlace`].
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    place: ConnectionPlace,
}

type TrackedFuture<B> = Pin<Box<dyn Future<Output = Result<Response<TrackedBody<B>>, Infallible>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Body + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedFuture<B>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.place.clone());
        let in_flight = self.activity.begin();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { inner: body, _in_flight: in_flight }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it ends or is dropped.
struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
