//! The ingress's own HTTP/1.1 client to instances, for the common request: no upgrade, to a
//! revision that serves HTTP/1.1, with a body that is empty or announces a `Content-Length` of
//! at most [`MAX_BUFFERED_BODY`]. Such a body is read whole before it is sent, so a request that
//! meets a connection the instance closed while it sat idle can be sent again on a new one. Every
//! other request (streamed bodies, upgrades, h2c) goes through hyper-util's client.
//!
//! It exists for speed: it keeps each worker thread's idle connections to each instance itself
//! and does its work in the request's own task, with no connection task and no dispatch
//! channel: one write for a request, usually one read for its response.
//!
//! Responses are framed as RFC 9112 section 6.3 says: no body after a HEAD request or for 204
//! and 304; then `Transfer-Encoding: chunked` (decoded here, trailers included), a
//! `Content-Length`, or everything up to the connection's close. A connection goes back to the
//! idle pool only after a whole response, when neither side asked to close it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use http_body::{Body, Frame};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::upstream::Upstream;

#[cfg(test)]
mod tests;

/// The largest request body the client sends itself (read whole first); larger or unannounced
/// bodies are streamed by hyper-util's client.
pub(crate) const MAX_BUFFERED_BODY: usize = 64 << 10;
/// The most a response head may take, status line and headers.
const MAX_HEAD: usize = 64 << 10;
/// The most header fields a response head may have.
const MAX_HEADERS: usize = 128;
/// An idle connection older than this is closed rather than used.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per instance and worker thread; more are closed.
const MAX_IDLE_PER_INSTANCE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much is read from an instance at a time.
const READ_SIZE: usize = 16 << 10;

/// Why an exchange with an instance failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot connect to the instance at {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connecting to the instance at {addr} took over {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: SocketAddr },
    #[error("the connection to the instance failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the instance closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("the instance's response is not valid HTTP/1.1: {0}")]
    Malformed(String),
    #[error("the instance's response head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the instance closed the connection mid-body")]
    Truncated,
}

/// One worker thread's idle connections, by instance address. Cheap to clone (shared).
#[derive(Clone, Default)]
pub(crate) struct Http1Client {
    idle: Arc<Mutex<HashMap<SocketAddr, Vec<IdleConnection>>>>,
}

struct IdleConnection {
    stream: TcpStream,
    /// Its read buffer, kept with it: a new one per request costs an allocation large enough
    /// to make malloc consolidate its free lists (measured: 6% of the ingress's time).
    buf: BytesMut,
    /// The instance it was opened to: an address may later belong to another instance.
    instance: Weak<dyn Upstream>,
    since: Instant,
}

/// The request as the client sends it: its head, already encoded, and its whole body.
pub(crate) struct Outgoing {
    pub method: Method,
    pub bytes: Vec<u8>,
}

/// Encodes a request head and body for an instance: the given headers; one `Host` (the
/// client's first, or `authority` when it sent none, as an HTTP/2 client does); its cookies on
/// one line; and a `Content-Length` for the body (any the client sent is replaced by the
/// body's real length). `Expect` is dropped: the body was already read.
pub(crate) fn encode_request(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    authority: &str,
    body: &[u8],
) -> Outgoing {
    let mut bytes = Vec::with_capacity(256 + headers.len() * 48 + body.len());
    bytes.extend_from_slice(method.as_str().as_bytes());
    bytes.push(b' ');
    bytes.extend_from_slice(path_and_query.as_bytes());
    bytes.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::EXPECT || name == header::HOST || name == header::COOKIE {
            continue;
        }
        push_field(&mut bytes, name.as_str().as_bytes(), value.as_bytes());
    }
    // One `Host`: the first, which routing used.
    let host = headers.get(header::HOST).map_or(authority.as_bytes(), HeaderValue::as_bytes);
    push_field(&mut bytes, b"host", host);
    // An HTTP/2 client may split its cookies over several fields: one line, joined with
    // "; " (RFC 9113 section 8.2.3).
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if let Some(first) = cookies.next() {
        let at = bytes.len();
        push_field(&mut bytes, b"cookie", first.as_bytes());
        for more in cookies {
            bytes.truncate(bytes.len() - 2);
            bytes.extend_from_slice(b"; ");
            bytes.extend_from_slice(more.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        debug_assert!(bytes[at..].ends_with(b"\r\n"));
    }
    if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        push_field(&mut bytes, b"content-length", body.len().to_string().as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    Outgoing { method: method.clone(), bytes }
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

impl Http1Client {
    /// Sends `request` to `instance` and reads the response head, on a pooled connection if
    /// there is one. If that connection fails before any byte of the answer arrives, it is
    /// dropped and the request sent once more, on a new connection, when that is safe: the
    /// method is idempotent, or no byte of the request was written. Never more than once.
    pub(crate) async fn send(
        &self,
        instance: &Arc<dyn Upstream>,
        request: &Outgoing,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let addr = instance.addr();
        let instance = Arc::downgrade(instance);
        if let Some((stream, buf)) = self.checkout(&instance, addr) {
            match self.exchange(stream, buf, &instance, addr, request).await {
                Ok(response) => return Ok(response),
                Err(Failure { error, retry: false }) => return Err(error),
                Err(Failure { error, retry: true }) => {
                    tracing::debug!(%error, %addr, "a pooled connection to the instance had gone stale");
                }
            }
        }
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Err(_) => return Err(UpstreamError::ConnectTimeout { addr }),
        };
        stream.set_nodelay(true)?;
        self.exchange(stream, BytesMut::with_capacity(READ_SIZE), &instance, addr, request).await.map_err(|f| f.error)
    }

    /// An idle connection to `instance` that is still open, if there is one.
    fn checkout(&self, instance: &Weak<dyn Upstream>, addr: SocketAddr) -> Option<(TcpStream, BytesMut)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let connections = idle.get_mut(&addr)?;
        while let Some(connection) = connections.pop() {
            if !Weak::ptr_eq(&connection.instance, instance) || connection.since.elapsed() >= IDLE_TIMEOUT {
                continue;
            }
            // A healthy idle connection has nothing to read: tokio answers that from the
            // readiness it last saw, without a system call. A close or a stray byte shows up as
            // readable.
            match connection.stream.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Some((connection.stream, connection.buf));
                }
                _ => continue,
            }
        }
        None
    }

    fn put_back(&self, instance: Weak<dyn Upstream>, addr: SocketAddr, stream: TcpStream, buf: BytesMut) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let connections = idle.entry(addr).or_default();
        if connections.len() < MAX_IDLE_PER_INSTANCE {
            connections.push(IdleConnection { stream, buf, instance, since: Instant::now() });
        }
    }

    /// Closes the idle connections older than [`IDLE_TIMEOUT`], and forgets addresses that
    /// have none left.
    pub(crate) fn close_expired(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, connections| {
            connections.retain(|c| c.since.elapsed() < IDLE_TIMEOUT);
            !connections.is_empty()
        });
    }

    /// How many idle connections the client keeps now.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).values().map(Vec::len).sum()
    }

    async fn exchange(
        &self,
        mut stream: TcpStream,
        mut buf: BytesMut,
        instance: &Weak<dyn Upstream>,
        addr: SocketAddr,
        request: &Outgoing,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let idempotent = matches!(
            request.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
        let mut written = 0;
        while written < request.bytes.len() {
            match stream.write(&request.bytes[written..]).await {
                Ok(0) => {
                    let error = std::io::Error::from(std::io::ErrorKind::WriteZero).into();
                    return Err(Failure { error, retry: written == 0 || idempotent });
                }
                Ok(n) => written += n,
                Err(e) => return Err(Failure { error: e.into(), retry: written == 0 || idempotent }),
            }
        }
        // Whether any byte of an answer came (an interim 1xx leaves nothing in `buf`).
        let mut answered = false;
        let (response, framing, keep_alive) = loop {
            match read_more(&mut stream, &mut buf).await {
                Ok(0) if !answered => {
                    return Err(Failure { error: UpstreamError::ClosedBeforeAnswer, retry: idempotent });
                }
                Ok(0) => return Err(Failure::final_(UpstreamError::Truncated)),
                Ok(_) => answered = true,
                Err(e) if !answered && e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(Failure { error: e.into(), retry: idempotent });
                }
                Err(e) => return Err(Failure::final_(e.into())),
            }
            match parse_head(&mut buf, &request.method).map_err(Failure::final_)? {
                Some(head) => break head,
                None if buf.len() > MAX_HEAD => return Err(Failure::final_(UpstreamError::HeadTooLarge)),
                None => {}
            }
        };
        let mut body = UpstreamBody {
            stream: Some(stream),
            buf,
            framing,
            reusable: keep_alive,
            owner: Some((self.clone(), instance.clone(), addr)),
        };
        body.finish_if_done();
        Ok(response.map(|()| body))
    }
}

struct Failure {
    error: UpstreamError,
    /// The request may be sent again on a new connection.
    retry: bool,
}

impl Failure {
    fn final_(error: UpstreamError) -> Failure {
        Failure { error, retry: false }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_more(stream, cx, buf)).await
}

fn poll_read_more(stream: &mut TcpStream, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<std::io::Result<usize>> {
    buf.reserve(READ_SIZE);
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Nothing left to read.
    Done,
    /// This many bytes left.
    Length(u64),
    /// Chunked, at this point of the encoding.
    Chunked(ChunkState),
    /// Up to the connection's close.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// A chunk-size line comes next.
    Size,
    /// This many bytes of chunk data left, then a CRLF.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// Parses a response head at the start of `buf` and takes it off; `None` when more bytes are
/// needed. Interim responses (1xx) are skipped.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<(Response<()>, Framing, bool)>, UpstreamError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut fields);
        let length = match parsed.parse(buf) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(UpstreamError::Malformed(e.to_string())),
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| UpstreamError::Malformed(format!("status {code}")))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::Malformed("101 Switching Protocols to a request that asked no upgrade".into()));
        }
        let http11 = parsed.version == Some(1);
        let mut headers = header_map(parsed.headers, "header")?;
        buf.advance(length);
        if status.is_informational() {
            continue;
        }
        let framing = framing(&headers, status, method)?;
        // A transfer coding beside a length, or in an HTTP/1.0 answer, is framing RFC 9112
        // (sections 6.1 and 6.3) calls faulty: the coding decides this body's end, the length
        // is dropped, and the connection is not used again.
        let mut faulty = false;
        if headers.contains_key(header::TRANSFER_ENCODING) {
            faulty = !http11 || headers.contains_key(header::CONTENT_LENGTH);
            headers.remove(header::CONTENT_LENGTH);
        }
        let connection = |token: &str| {
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        let keep_alive = framing != Framing::UntilClose
            && !faulty
            && if http11 { !connection("close") } else { connection("keep-alive") };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return Ok(Some((response, framing, keep_alive)));
    }
}

fn framing(headers: &HeaderMap, status: StatusCode, method: &Method) -> Result<Framing, UpstreamError> {
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Done);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case("chunked") => Framing::Chunked(ChunkState::Size),
            _ => Framing::UntilClose,
        });
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else { return Ok(Framing::UntilClose) };
    let parse = |v: &HeaderValue| {
        v.to_str().ok().filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).and_then(|s| s.parse().ok())
    };
    let length: u64 = parse(first).ok_or_else(|| UpstreamError::Malformed("Content-Length is not a number".into()))?;
    if lengths.any(|v| parse(v) != Some(length)) {
        return Err(UpstreamError::Malformed("Content-Length headers that disagree".into()));
    }
    Ok(if length == 0 { Framing::Done } else { Framing::Length(length) })
}

/// A response body read from the instance's connection, which goes back to its client's idle
/// pool once the body has been read to its end (if both sides keep it open); a body dropped
/// before its end closes the connection.
pub(crate) struct UpstreamBody {
    stream: Option<TcpStream>,
    /// Bytes read from the connection and not yet handed on.
    buf: BytesMut,
    framing: Framing,
    reusable: bool,
    /// Where the connection goes back: the client, and the instance it belongs to.
    owner: Option<(Http1Client, Weak<dyn Upstream>, SocketAddr)>,
}

impl UpstreamBody {
    /// Hands the connection back once the body is done, unless the instance sent more than
    /// the response or asked to close.
    fn finish_if_done(&mut self) {
        if self.framing != Framing::Done {
            return;
        }
        let stream = self.stream.take();
        if let (Some(stream), Some((client, instance, addr))) = (stream, self.owner.take())
            && self.reusable
            && self.buf.is_empty()
        {
            client.put_back(instance, addr, stream, std::mem::take(&mut self.buf));
        }
    }

    /// Reads more from the instance; `Ok(false)` at the connection's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, UpstreamError>> {
        let Some(stream) = self.stream.as_mut() else { return Poll::Ready(Ok(false)) };
        let read = ready!(poll_read_more(stream, cx, &mut self.buf))?;
        Poll::Ready(Ok(read > 0))
    }

    /// The next frame of a chunked body, once enough of it is buffered.
    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
        state: ChunkState,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match state {
            ChunkState::Size => {
                let Some(line) = self.take_line()? else { return self.poll_more_or_truncated(cx) };
                let size = parse_chunk_size(&line)?;
                self.framing = Framing::Chunked(if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) });
                self.poll_data(cx)
            }
            ChunkState::Data(left) => {
                if self.buf.is_empty() {
                    return self.poll_more_or_truncated(cx);
                }
                let (data, left) = self.take_data(left);
                self.framing = Framing::Chunked(if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) });
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            ChunkState::DataEnd => {
                let Some(line) = self.take_line()? else { return self.poll_more_or_truncated(cx) };
                if !line.is_empty() {
                    return Poll::Ready(Some(Err(UpstreamError::Malformed("no CRLF after a chunk's data".into()))));
                }
                self.framing = Framing::Chunked(ChunkState::Size);
                self.poll_data(cx)
            }
            ChunkState::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (length, trailers) = match httparse::parse_headers(&self.buf, &mut fields) {
                    Ok(httparse::Status::Complete((length, fields))) => (length, trailer_map(fields)?),
                    Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                        return Poll::Ready(Some(Err(UpstreamError::HeadTooLarge)));
                    }
                    Ok(httparse::Status::Partial) => return self.poll_more_or_truncated(cx),
                    Err(e) => return Poll::Ready(Some(Err(UpstreamError::Malformed(format!("trailers: {e}"))))),
                };
                self.buf.advance(length);
                self.framing = Framing::Done;
                self.finish_if_done();
                match trailers {
                    Some(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    /// Takes up to `left` bytes of body off the buffer; returns them and how many are left.
    fn take_data(&mut self, left: u64) -> (Bytes, u64) {
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(self.buf.len());
        (self.buf.split_to(take).freeze(), left - take as u64)
    }

    /// Takes a CRLF-terminated line off the buffer (without its CRLF), if a whole one is there.
    fn take_line(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        match self.buf.windows(2).position(|w| w == b"\r\n") {
            Some(at) => {
                let line = self.buf.split_to(at).freeze();
                self.buf.advance(2);
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_HEAD => Err(UpstreamError::Malformed("a chunk line without an end".into())),
            None => Ok(None),
        }
    }

    fn poll_more_or_truncated(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match ready!(self.poll_fill(cx)) {
            Ok(true) => self.poll_data(cx),
            Ok(false) => Poll::Ready(Some(Err(UpstreamError::Truncated))),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.framing {
            Framing::Done => {
                self.finish_if_done();
                Poll::Ready(None)
            }
            Framing::Length(left) => {
                if self.buf.is_empty() {
                    return self.poll_more_or_truncated(cx);
                }
                let (data, left) = self.take_data(left);
                self.framing = if left == 0 { Framing::Done } else { Framing::Length(left) };
                self.finish_if_done();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Framing::UntilClose => {
                if !self.buf.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(self.buf.split().freeze()))));
                }
                match ready!(self.poll_fill(cx)) {
                    Ok(true) => Poll::Ready(Some(Ok(Frame::data(self.buf.split().freeze())))),
                    Ok(false) => {
                        self.framing = Framing::Done;
                        self.reusable = false;
                        self.finish_if_done();
                        Poll::Ready(None)
                    }
                    Err(e) => Poll::Ready(Some(Err(e))),
                }
            }
            Framing::Chunked(state) => self.poll_chunked(cx, state),
        }
    }
}

/// A chunked body's trailer fields; `None` when it has none.
fn trailer_map(fields: &[httparse::Header<'_>]) -> Result<Option<HeaderMap>, UpstreamError> {
    if fields.is_empty() {
        return Ok(None);
    }
    header_map(fields, "trailer").map(Some)
}

/// Parsed fields as a header map; `what` names them in the error ("header", "trailer").
fn header_map(fields: &[httparse::Header<'_>], what: &str) -> Result<HeaderMap, UpstreamError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| UpstreamError::Malformed(format!("{what} name {:?}", field.name)))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| UpstreamError::Malformed(format!("the value of {what} {name}")))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A chunk-size line's size (RFC 9112 section 7.1): hex digits, then optional blanks and
/// extensions, which are ignored. Leading zeros are allowed; a size past `u64` is refused.
fn parse_chunk_size(line: &[u8]) -> Result<u64, UpstreamError> {
    let malformed = || UpstreamError::Malformed(format!("chunk size line {:?}", String::from_utf8_lossy(line)));
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let (hex, rest) = line.split_at(digits);
    let rest = &rest[rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count()..];
    let extension_ok = rest.first().is_none_or(|&b| b == b';') && !rest.iter().any(|&b| b == b'\r' || b == 0);
    if digits == 0 || !extension_ok {
        return Err(malformed());
    }
    let first_significant = hex.iter().position(|&b| b != b'0').unwrap_or(hex.len());
    let significant = &hex[first_significant..];
    if significant.len() > 16 {
        return Err(malformed());
    }
    if significant.is_empty() {
        return Ok(0);
    }
    let significant = std::str::from_utf8(significant).map_err(|_| malformed())?;
    u64::from_str_radix(significant, 16).map_err(|_| malformed())
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let frame = this.poll_data(cx);
        if let Poll::Ready(Some(Err(_))) = &frame {
            // A broken body never goes back to the pool, and ends here.
            this.framing = Framing::Done;
            this.reusable = false;
            this.stream = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.framing {
            Framing::Done => http_body::SizeHint::with_exact(0),
            Framing::Length(left) => http_body::SizeHint::with_exact(left),
            _ => http_body::SizeHint::default(),
        }
    }
}
