//! The console (and the API it calls) on the HTTPS ingress, for the host `--console-host`
//! (default `console.{domain}`): a [`wharf_router::LocalSite`] that hands each request the
//! HTTPS listener received for that host to the same axum router as the API address, run on
//! the server's main runtime (the ingress's worker threads only carry the bytes). The
//! router's ingress sets `X-Forwarded-Proto: https`, so the session cookie is `Secure`, and
//! the client's address comes along for the sign-in rate limit.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tower_service::Service as _;
use wharf_router::upstream::BoxFuture;
use wharf_router::{LocalSite, ProxyBody};

/// The API router, served for one host name on the HTTPS ingress.
#[derive(Debug)]
pub struct ConsoleSite {
    host: String,
    router: axum::Router,
    runtime: tokio::runtime::Handle,
}

impl ConsoleSite {
    /// `router` answers on `runtime` (the server's main runtime) for `host`.
    pub fn new(host: String, router: axum::Router, runtime: tokio::runtime::Handle) -> ConsoleSite {
        ConsoleSite { host, router, runtime }
    }
}

impl LocalSite for ConsoleSite {
    fn host(&self) -> &str {
        &self.host
    }

    fn serve(
        &self,
        mut request: hyper::Request<Incoming>,
        remote: SocketAddr,
    ) -> BoxFuture<hyper::Response<ProxyBody>> {
        request.extensions_mut().insert(ConnectInfo(remote));
        let mut router = self.router.clone();
        let answer = self.runtime.spawn(async move { router.call(request).await });
        Box::pin(async move {
            match answer.await {
                Ok(Ok(response)) => response.map(|body| SyncBody(Mutex::new(body)).boxed()),
                Ok(Err(never)) => match never {},
                Err(error) => {
                    tracing::error!(%error, "the console's handler did not finish");
                    let mut response = hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"internal error\n"))
                            .map_err(|never| match never {})
                            .boxed(),
                    );
                    *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    response
                }
            }
        })
    }
}

/// An axum body as the ingress's response body type, which must be `Sync`: the body is only
/// ever polled through `&mut` (no lock is taken), and a failing body ends the response where it failed (logged; hyper then closes the connection
/// when the length does not add up).
struct SyncBody(Mutex<axum::body::Body>);

impl Body for SyncBody {
    type Data = Bytes;
    type Error = wharf_router::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let inner = self.get_mut().0.get_mut().unwrap_or_else(|p| p.into_inner());
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(error))) => {
                tracing::warn!(%error, "a console response body failed; ending it early");
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().map(|b| b.is_end_stream()).unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().map(|b| b.size_hint()).unwrap_or_default()
    }
}
