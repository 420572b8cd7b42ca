//! Proxy failures and how each is answered, decided once here: an unknown host is a 404, a
//! full queue a 429, no capacity on the machine for a needed instance a 429 with the reason,
//! no instance in time a 503, an instance that cannot start a 503, an
//! upstream that fails a 502, a request past its timeout a 504 (the instance is kept).
//!
//! A gRPC call (`content-type: application/grpc...`) gets the same failure as gRPC clients
//! understand it: a trailers-only answer (HTTP 200) whose `grpc-status` is DEADLINE_EXCEEDED
//! for a timeout, UNIMPLEMENTED for an unknown host, and UNAVAILABLE (which clients may retry)
//! for the rest, with the same message in `grpc-message`.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Response, StatusCode};

use crate::access::Refusal;
use crate::proxy::ProxyBody;
use crate::upstream::LaunchError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no service answers to host {host:?}")]
    UnknownHost { host: String },
    #[error("the service has no revision ready to serve")]
    NoRevision,
    #[error("the request queue is full")]
    QueueFull,
    #[error("no instance became available in time")]
    NoInstance,
    #[error("an instance could not be started: {0}")]
    StartFailed(LaunchError),
    /// The request needs a new instance and the platform has no room for one now.
    #[error("no capacity for another instance: {0}")]
    NoCapacity(LaunchError),
    #[error("the upstream request failed: {0}")]
    Upstream(String),
    #[error("the request exceeded its timeout of {0:?}")]
    Timeout(std::time::Duration),
    /// The client's request body could not be read (it broke off, or was longer than it said).
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    /// The caller may not invoke the service (see [`crate::access`]).
    #[error("refused {path}: {refusal}")]
    Refused { refusal: Refusal, path: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost { .. } => StatusCode::NOT_FOUND,
            ProxyError::QueueFull | ProxyError::NoCapacity(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoRevision | ProxyError::NoInstance | ProxyError::StartFailed(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Refused { refusal, .. } => match refusal {
                Refusal::NotInternal => StatusCode::NOT_FOUND,
                Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
                Refusal::Policy(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// Whether the request can be retried on another instance: only failures where the
    /// request never reached an instance.
    pub fn retryable(&self) -> bool {
        matches!(self, ProxyError::QueueFull | ProxyError::NoInstance | ProxyError::NoCapacity(_))
    }

    fn body(&self) -> String {
        match self {
            ProxyError::UnknownHost { .. } => {
                "Error: Page not found. The requested URL was not found on this server.".to_owned()
            }
            ProxyError::QueueFull | ProxyError::NoInstance => {
                "The request was aborted because there was no available instance.".to_owned()
            }
            ProxyError::NoRevision => "The service has no ready revision to serve this request.".to_owned(),
            ProxyError::StartFailed(reason) => format!("The service could not start an instance: {reason}"),
            ProxyError::NoCapacity(reason) => {
                format!("The request was aborted because there was no available instance: {reason}")
            }
            ProxyError::Upstream(_) => "The upstream instance failed to answer the request.".to_owned(),
            ProxyError::ClientBody(reason) => format!("The request body could not be read: {reason}"),
            ProxyError::Timeout(t) => format!("upstream request timeout: the request exceeded {}s", t.as_secs()),
            ProxyError::Refused { refusal, path } => google_error_page(refusal, path),
        }
    }

    /// The gRPC status code of this failure.
    pub fn grpc_code(&self) -> u8 {
        match self {
            ProxyError::Timeout(_) => GRPC_DEADLINE_EXCEEDED,
            ProxyError::UnknownHost { .. } => 12, // UNIMPLEMENTED, as gRPC maps a 404
            _ => 14,                              // UNAVAILABLE
        }
    }

    /// The failure as a gRPC client expects it: trailers-only, status in `grpc-status`.
    pub fn into_grpc_response(self) -> Response<ProxyBody> {
        if self.status().is_server_error() {
            tracing::debug!(error = %self, "proxy error (gRPC)");
        }
        let mut response = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed());
        let headers = response.headers_mut();
        headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", hyper::header::HeaderValue::from(u16::from(self.grpc_code())));
        if let Ok(message) = hyper::header::HeaderValue::from_str(&grpc_message(&self.body())) {
            headers.insert("grpc-message", message);
        }
        response
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        if status.is_server_error() {
            tracing::debug!(error = %self, "proxy error");
        }
        let refused = matches!(self, ProxyError::Refused { .. });
        if refused {
            tracing::debug!(error = %self, "request refused");
        }
        let body = Full::new(Bytes::from(format!("{}\n", self.body()))).map_err(|never| match never {}).boxed();
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let content_type = if refused { "text/html; charset=UTF-8" } else { "text/plain; charset=utf-8" };
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, content_type.parse().expect("valid"));
        if status == StatusCode::UNAUTHORIZED {
            // What Cloud Run's front end sends with its 401.
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                "Bearer error=\"invalid_token\" error_description=\"The access token could not be verified\""
                    .parse()
                    .expect("valid"),
            );
        }
        if self.retryable() {
            response.headers_mut().insert(hyper::header::RETRY_AFTER, "1".parse().expect("valid"));
        }
        response
    }
}

/// The page Google's front end (and so Cloud Run) answers a refused invocation with.
fn google_error_page(refusal: &Refusal, path: &str) -> String {
    let escaped: String = path
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            c => c.to_string(),
        })
        .collect();
    let (code, title, sentence) = match refusal {
        Refusal::Unauthenticated(_) => (
            401,
            "Unauthorized",
            format!("Your client does not have permission to the requested URL <code>{escaped}</code>."),
        ),
        Refusal::Forbidden { .. } => (
            403,
            "Forbidden",
            format!("Your client does not have permission to get URL <code>{escaped}</code> from this server."),
        ),
        Refusal::NotInternal => (404, "Page not found", "The requested URL was not found on this server.".to_owned()),
        Refusal::Policy(_) => {
            (500, "Server Error", "The server encountered an error and could not complete your request.".to_owned())
        }
    };
    format!(
        "<html><head>\n<meta http-equiv=\"content-type\" content=\"text/html;charset=utf-8\">\n<title>{code} {title}</title>\n</head>\n<body text=#000000 bgcolor=#ffffff>\n<h1>Error: {title}</h1>\n<h2>{sentence}</h2>\n<h2></h2>\n</body></html>"
    )
}

/// gRPC's DEADLINE_EXCEEDED.
pub const GRPC_DEADLINE_EXCEEDED: u8 = 4;

/// Percent-encodes a `grpc-message` as the gRPC protocol asks: bytes outside printable ASCII,
/// and `%`, are escaped.
pub fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.trim_end().bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_calls_get_grpc_statuses() {
        let timeout = ProxyError::Timeout(std::time::Duration::from_secs(2)).into_grpc_response();
        assert_eq!(timeout.status(), StatusCode::OK);
        assert_eq!(timeout.headers()["grpc-status"], "4");
        assert_eq!(timeout.headers()["grpc-message"], "upstream request timeout: the request exceeded 2s");
        assert_eq!(ProxyError::UnknownHost { host: "x".into() }.grpc_code(), 12);
        assert_eq!(ProxyError::QueueFull.grpc_code(), 14);
        assert_eq!(grpc_message("100% sure\n"), "100%25 sure");
        assert_eq!(grpc_message("caf\u{e9}"), "caf%C3%A9");
    }
}
