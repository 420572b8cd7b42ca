//! `testapp grpc`: a gRPC server on `$PORT` (HTTP/2 cleartext only, as a revision deployed
//! with `--use-http2` serves), built on tonic without generated code. It serves
//!
//! - `wharf.test.Echo/Unary(EchoRequest) -> EchoReply`: echoes the message after `sleep_ms`,
//!   with the revision, and the request's `x-forwarded-proto` and `x-forwarded-for` metadata;
//!   a `fail_code` answers that gRPC status instead, with a trailer `x-testapp: failed`.
//! - `wharf.test.Echo/Chat(stream EchoRequest) -> stream EchoReply`: echoes each message as it
//!   arrives (bidirectional streaming); a stream the client abandons is counted as cancelled.
//! - `wharf.test.Echo/Stats(EchoRequest) -> EchoReply`: `message` = how many Chat streams
//!   ended by cancellation, and how many Unary calls ended before their answer (the client
//!   gave up: a deadline or a reset), as `cancelled=N abandoned=M`.
//! - the standard health service (`grpc.health.v1.Health`): the server and `wharf.test.Echo`
//!   are `SERVING`, or `NOT_SERVING` with `TESTAPP_GRPC_NOT_SERVING=1`.
//!
//! The messages are the wire contract with the tests (`crates/wharf/tests/grpc.rs` holds the
//! same two structs): `EchoRequest { message = 1, sleep_ms = 2, fail_code = 3 }`,
//! `EchoReply { message = 1, revision = 2, forwarded_proto = 3, forwarded_for = 4 }`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tonic::server::NamedService;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint64, tag = "2")]
    pub sleep_ms: u64,
    #[prost(int32, tag = "3")]
    pub fail_code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub revision: String,
    #[prost(string, tag = "3")]
    pub forwarded_proto: String,
    #[prost(string, tag = "4")]
    pub forwarded_for: String,
}

/// What the Stats call reports.
#[derive(Debug, Default)]
struct Counters {
    cancelled_chats: AtomicU64,
    abandoned_unaries: AtomicU64,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

/// The Echo service as a tower service dispatching on the path, as tonic's generated servers do.
#[derive(Debug, Clone, Default)]
struct EchoServer {
    counters: Arc<Counters>,
}

impl NamedService for EchoServer {
    const NAME: &'static str = "wharf.test.Echo";
}

fn metadata(request: &tonic::metadata::MetadataMap, key: &str) -> String {
    request.get(key).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// Counts a Unary call as abandoned unless it is disarmed (it answered).
struct Abandoned(Option<Arc<Counters>>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(counters) = self.0.take() {
            counters.abandoned_unaries.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct Unary(Arc<Counters>);

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<Result<tonic::Response<EchoReply>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let counters = self.0.clone();
        Box::pin(async move {
            let mut guard = Abandoned(Some(counters));
            let forwarded_proto = metadata(request.metadata(), "x-forwarded-proto");
            let forwarded_for = metadata(request.metadata(), "x-forwarded-for");
            let message = request.into_inner();
            tokio::time::sleep(Duration::from_millis(message.sleep_ms)).await;
            guard.0 = None;
            if message.fail_code != 0 {
                let mut status = tonic::Status::new(tonic::Code::from(message.fail_code), message.message);
                status.metadata_mut().insert("x-testapp", tonic::metadata::MetadataValue::from_static("failed"));
                return Err(status);
            }
            Ok(tonic::Response::new(EchoReply {
                message: message.message,
                revision: std::env::var("K_REVISION").unwrap_or_default(),
                forwarded_proto,
                forwarded_for,
            }))
        })
    }
}

struct Stats(Arc<Counters>);

impl tonic::server::UnaryService<EchoRequest> for Stats {
    type Response = EchoReply;
    type Future = BoxFuture<Result<tonic::Response<EchoReply>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<EchoRequest>) -> Self::Future {
        let message = format!(
            "cancelled={} abandoned={}",
            self.0.cancelled_chats.load(Ordering::SeqCst),
            self.0.abandoned_unaries.load(Ordering::SeqCst)
        );
        Box::pin(async move { Ok(tonic::Response::new(EchoReply { message, ..EchoReply::default() })) })
    }
}

struct Chat(Arc<Counters>);

/// One Chat stream's replies; counts the stream as cancelled once, when its client reset it:
/// either the request stream fails, or the server drops the replies before they ended.
struct ChatReplies {
    inner: ReplyStream,
    cancelled: Arc<std::sync::atomic::AtomicBool>,
    counters: Arc<Counters>,
    ended: bool,
}

impl ChatReplies {
    fn mark_cancelled(cancelled: &std::sync::atomic::AtomicBool, counters: &Counters) {
        if !cancelled.swap(true, Ordering::SeqCst) {
            counters.cancelled_chats.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Stream for ChatReplies {
    type Item = Result<EchoReply, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(None) = next {
            self.ended = true;
        }
        next
    }
}

impl Drop for ChatReplies {
    fn drop(&mut self) {
        if !self.ended {
            println!("testapp: chat stream dropped before it ended (the client reset it)");
            ChatReplies::mark_cancelled(&self.cancelled, &self.counters);
        }
    }
}

impl tonic::server::StreamingService<EchoRequest> for Chat {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<tonic::Response<ReplyStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<EchoRequest>>) -> Self::Future {
        let counters = self.0.clone();
        Box::pin(async move {
            let revision = std::env::var("K_REVISION").unwrap_or_default();
            let inbound = request.into_inner();
            let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (on_error, counted) = (cancelled.clone(), counters.clone());
            let replies = inbound.filter_map(move |item| {
                let (cancelled, counters, revision) = (on_error.clone(), counted.clone(), revision.clone());
                async move {
                    match item {
                        Ok(m) => Some(Ok(EchoReply { message: m.message, revision, ..EchoReply::default() })),
                        Err(status) => {
                            println!("testapp: chat stream failed: {}", status.message());
                            ChatReplies::mark_cancelled(&cancelled, &counters);
                            None
                        }
                    }
                }
            });
            let replies = ChatReplies { inner: Box::pin(replies), cancelled, counters, ended: false };
            Ok(tonic::Response::new(Box::pin(replies) as ReplyStream))
        })
    }
}

impl<B> tower_service::Service<http::Request<B>> for EchoServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let counters = self.counters.clone();
        let codec = tonic_prost::ProstCodec::<EchoReply, EchoRequest>::default();
        match request.uri().path() {
            "/wharf.test.Echo/Unary" => {
                Box::pin(async move { Ok(tonic::server::Grpc::new(codec).unary(Unary(counters), request).await) })
            }
            "/wharf.test.Echo/Stats" => {
                Box::pin(async move { Ok(tonic::server::Grpc::new(codec).unary(Stats(counters), request).await) })
            }
            "/wharf.test.Echo/Chat" => {
                Box::pin(async move { Ok(tonic::server::Grpc::new(codec).streaming(Chat(counters), request).await) })
            }
            _ => Box::pin(async move { Ok(tonic::Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// Serves gRPC on `$PORT` until killed.
pub fn serve() -> ! {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async move {
        let (reporter, health) = tonic_health::server::health_reporter();
        if std::env::var("TESTAPP_GRPC_NOT_SERVING").as_deref() == Ok("1") {
            reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            reporter.set_not_serving::<EchoServer>().await;
        } else {
            reporter.set_serving::<EchoServer>().await;
        }
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        println!("testapp: serving gRPC on port {port}");
        let server = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(EchoServer::default())
            .serve_with_shutdown(std::net::SocketAddr::from(([0, 0, 0, 0], port)), async move {
                sigterm.recv().await;
                println!("testapp: received SIGTERM, exiting");
            });
        if let Err(e) = server.await {
            eprintln!("testapp: gRPC server failed: {e}");
            std::process::exit(1);
        }
    });
    std::process::exit(0)
}
