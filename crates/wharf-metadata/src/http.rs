//! The metadata HTTP server instances reach at `http://169.254.169.254` and
//! `http://metadata.google.internal`: Google's metadata server as Cloud Run serves it, with
//! the paths Google's client libraries use (google-auth's `compute_engine` credentials,
//! `google.auth.default()`, `google.oauth2.id_token.fetch_id_token`):
//!
//! - `/` and `/computeMetadata/v1/` listings (google-auth's "am I on Google?" ping is a
//!   `GET /` that must answer 200 with `Metadata-Flavor: Google`);
//! - `project/project-id`, `project/numeric-project-id`;
//! - `instance/id`, `instance/region` (`projects/NUMBER/regions/REGION`), `instance/zone`;
//! - `instance/service-accounts/` and, for `default` or the account's email,
//!   `.../{account}/` (with `?recursive=true`: `aliases`, `email`, `scopes`), `.../email`,
//!   `.../aliases`, `.../scopes`, `.../token` (a Wharf access token for the account, the kind
//!   the token endpoint issues) and `.../identity?audience=AUD[&format=full]` (a Wharf ID
//!   token, as `generateIdToken` signs);
//! - `?alt=json|text` on values and directories.
//!
//! Every request must carry `Metadata-Flavor: Google` (or the legacy
//! `X-Google-Metadata-Request: True`) and none may carry `X-Forwarded-For` (a proxied request
//! is not the instance's own), else 403, as on Google's VMs; every answer carries
//! `Metadata-Flavor: Google`.
//!
//! **Who is asking** is decided by the connection's source address alone: the runtime DNATs
//! an instance's packets to this server's loopback listener without touching their source, so
//! the peer address is the instance's own (a /32 only it has). [`Callers`] maps it to the
//! instance the server started there and who that instance acts as, from the server's live
//! state; nothing the instance sends counts. An address no instance holds gets 403. A
//! disabled or deleted service account gets no token.
//!
//! It does not decide which account a revision runs as (the API checks `actAs` at deploy),
//! nor what the tokens may do (IAM policies do).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use wharf_iam::{Iam, Principal};

/// The OAuth scope every Wharf token is reported to have (Wharf's tokens carry the account's
/// roles, not scopes; this is what Cloud Run reports by default).
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How long a minted access token lives.
const ACCESS_TOKEN_LIFETIME_SECS: i64 = 3600;

/// An access token is handed out again while it has at least this long to live (as Google's
/// metadata server does), so clients refreshing often do not mint a token each time.
const ACCESS_TOKEN_REUSE_MIN_SECS: i64 = 300;

/// Who an instance is and acts as, as the server's live state says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The instance's id (`instance/id`).
    pub instance: String,
    pub project: String,
    /// The location of its revision or job (`us-central1`).
    pub region: String,
    /// The service account of its revision or job; empty: the project's default account.
    pub service_account: String,
}

/// Finds the instance that connects from an address: the server's table of the instances it
/// started (the runtime's), never anything the instance sends.
pub trait Callers: Send + Sync + fmt::Debug + 'static {
    /// The instance holding `ip` now, if any.
    fn caller(&self, ip: IpAddr) -> Option<Caller>;
}

/// The metadata server's shared state: whom to ask who is calling, and IAM for tokens.
#[derive(Debug, Clone)]
pub struct MetadataServer {
    callers: Arc<dyn Callers>,
    iam: Iam,
    /// The last access token minted per account, handed out again while it lives long enough.
    access_tokens: Arc<Mutex<HashMap<String, wharf_iam::AccessToken>>>,
}

impl MetadataServer {
    pub fn new(callers: Arc<dyn Callers>, iam: Iam) -> MetadataServer {
        MetadataServer { callers, iam, access_tokens: Arc::default() }
    }
}

/// The metadata server's routes. Each connection's router must carry the peer address as a
/// [`ConnectInfo<SocketAddr>`] extension ([`for_connection`]).
pub fn router(server: MetadataServer) -> Router {
    Router::new().fallback(move |request: Request<axum::body::Body>| {
        let server = server.clone();
        async move { server.handle(&request) }
    })
}

/// `router` for one connection from `remote`: what the handler reads the caller's address
/// from.
pub fn for_connection(router: &Router, remote: SocketAddr) -> Router {
    router.clone().layer(axum::Extension(ConnectInfo(remote)))
}

/// Why a metadata request was not answered; each maps to the status Google's metadata server
/// gives, with a body saying what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("Missing Metadata-Flavor:Google header: send 'Metadata-Flavor: Google' with every metadata request")]
    MissingFlavor,
    #[error(
        "Request had an X-Forwarded-For header and was rejected: the metadata server answers instances directly, not through proxies"
    )]
    Forwarded,
    #[error(
        "{0} is not the address of an instance of this Wharf server: the metadata server answers its own instances only"
    )]
    UnknownCaller(IpAddr),
    #[error("{0} is not a metadata path this server knows (see /computeMetadata/v1/)")]
    NotFound(String),
    #[error(
        "service account {requested:?} is not this instance's: use 'default' or {own} (the account its revision or job runs as)"
    )]
    OtherAccount { requested: String, own: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("method {0} is not allowed: the metadata server answers GET")]
    Method(Method),
    #[error(
        "service account {0} is disabled or deleted: it gets no tokens (enable it with `wharf iam service-accounts enable`, or deploy with another --service-account)"
    )]
    AccountDisabled(String),
    #[error("cannot issue a token for {account}: {reason}")]
    Token { account: String, reason: String },
}

impl MetadataError {
    fn status(&self) -> StatusCode {
        match self {
            MetadataError::MissingFlavor
            | MetadataError::Forwarded
            | MetadataError::UnknownCaller(_)
            | MetadataError::AccountDisabled(_) => StatusCode::FORBIDDEN,
            MetadataError::NotFound(_) | MetadataError::OtherAccount { .. } => StatusCode::NOT_FOUND,
            MetadataError::BadRequest(_) => StatusCode::BAD_REQUEST,
            MetadataError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            MetadataError::Token { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for MetadataError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "metadata request failed");
        } else {
            tracing::debug!(error = %self, %status, "metadata request refused");
        }
        reply(status, TEXT, format!("{self}\n"))
    }
}

const TEXT: &str = "application/text";
const JSON: &str = "application/json";

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert("metadata-flavor", HeaderValue::from_static("Google"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::SERVER, HeaderValue::from_static("Wharf Metadata Server"));
    response
}

/// A metadata value: a scalar, a directory (entries, directories ending in `/`), or JSON
/// that is always sent as JSON (tokens).
enum Answer {
    Text(String),
    /// Several values: one a line as text, an array as JSON (`aliases`, `scopes`).
    List(Vec<String>),
    Directory(Vec<(&'static str, Answer)>),
    /// An account's entries, keyed by names known only at run time.
    Accounts(Vec<(String, Answer)>),
    Json(Value),
}

impl Answer {
    /// `alt=json` rendering, and the recursive JSON of a directory (camelCase keys, as
    /// Google's).
    fn to_json(&self) -> Value {
        match self {
            Answer::Text(text) => match text.parse::<u64>() {
                Ok(number) if !text.starts_with('0') || text == "0" => json!(number),
                _ => json!(text),
            },
            Answer::Json(value) => value.clone(),
            Answer::List(items) => json!(items),
            Answer::Directory(entries) => {
                Value::Object(entries.iter().map(|(name, a)| (camel_case(name), a.to_json())).collect())
            }
            Answer::Accounts(entries) => {
                Value::Object(entries.iter().map(|(name, a)| (name.clone(), a.to_json())).collect())
            }
        }
    }

    /// A directory's listing: one entry a line, directories with a trailing `/`.
    fn listing(&self) -> Vec<String> {
        let entry = |name: &str, answer: &Answer| match answer {
            Answer::Directory(_) | Answer::Accounts(_) => format!("{name}/"),
            _ => name.to_owned(),
        };
        match self {
            Answer::Directory(entries) => entries.iter().map(|(n, a)| entry(n, a)).collect(),
            Answer::Accounts(entries) => entries.iter().map(|(n, a)| entry(n, a)).collect(),
            _ => Vec::new(),
        }
    }

    fn is_directory(&self) -> bool {
        matches!(self, Answer::Directory(_) | Answer::Accounts(_))
    }
}

fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The query parameters the metadata server looks at.
#[derive(Debug, Default)]
struct Params {
    recursive: bool,
    alt: Option<String>,
    audience: Option<String>,
    format: Option<String>,
}

impl Params {
    fn parse(uri: &Uri) -> Result<Params, MetadataError> {
        let pairs: Vec<(String, String)> = match uri.query() {
            None => Vec::new(),
            Some(query) => serde_urlencoded_pairs(query)?,
        };
        let mut params = Params::default();
        for (name, value) in pairs {
            match name.as_str() {
                "recursive" => params.recursive = value.eq_ignore_ascii_case("true"),
                "alt" => match value.as_str() {
                    "json" | "text" => params.alt = Some(value),
                    other => {
                        return Err(MetadataError::BadRequest(format!(
                            "alt={other:?} is not supported: use alt=json or alt=text"
                        )));
                    }
                },
                "audience" => params.audience = Some(value),
                "format" => params.format = Some(value),
                // Accepted and not used: Wharf's tokens are not narrowed by scope, licenses
                // are not included, and nothing changes to wait for.
                _ => {}
            }
        }
        Ok(params)
    }
}

fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, MetadataError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{query}").parse::<Uri>().map_err(|e| MetadataError::BadRequest(format!("bad query: {e}")))?,
    )
    .map(|q| q.0)
    .map_err(|e| MetadataError::BadRequest(format!("bad query {query:?}: {e}")))
}

impl MetadataServer {
    fn handle(&self, request: &Request<axum::body::Body>) -> Response {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let span = tracing::debug_span!("metadata", peer = ?peer, path = %request.uri().path());
        let _entered = span.enter();
        match self.answer(request.method(), request.uri(), request.headers(), peer) {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    fn answer(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Response, MetadataError> {
        if headers.contains_key("x-forwarded-for") {
            return Err(MetadataError::Forwarded);
        }
        let flavored = headers.get("metadata-flavor").is_some_and(|v| v == "Google")
            || headers.get("x-google-metadata-request").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        if !flavored {
            return Err(MetadataError::MissingFlavor);
        }
        if method != Method::GET && method != Method::HEAD {
            return Err(MetadataError::Method(method.clone()));
        }
        let path = uri.path();
        if path == "/" || path.is_empty() {
            return Ok(reply(StatusCode::OK, TEXT, "computeMetadata/\n".to_owned()));
        }
        if path == "/computeMetadata" || path == "/computeMetadata/" {
            return Ok(reply(StatusCode::OK, TEXT, "v1/\n".to_owned()));
        }
        let Some(rest) = path.strip_prefix("/computeMetadata/v1") else {
            return Err(MetadataError::NotFound(path.to_owned()));
        };
        let peer = peer.map(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        });
        let caller = peer
            .and_then(|ip| self.callers.caller(ip))
            .ok_or(MetadataError::UnknownCaller(peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))))?;
        let params = Params::parse(uri)?;
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let answer = self.resolve(&caller, &segments, &params, path)?;
        Ok(render(&answer, &params))
    }

    /// The value at `segments` (below `/computeMetadata/v1/`) for `caller`.
    fn resolve(
        &self,
        caller: &Caller,
        segments: &[&str],
        params: &Params,
        path: &str,
    ) -> Result<Answer, MetadataError> {
        let not_found = || MetadataError::NotFound(path.to_owned());
        let number = wharf_iam::project_number(&caller.project);
        match segments {
            [] => Ok(Answer::Directory(vec![
                ("instance", self.instance(caller, number)),
                ("project", project(caller, number)),
            ])),
            ["project", rest @ ..] => descend(project(caller, number), rest).ok_or_else(not_found),
            ["instance", "service-accounts", account, rest @ ..] => {
                let email = self.email(caller);
                if *account != "default" && !account.eq_ignore_ascii_case(&email) {
                    return Err(MetadataError::OtherAccount { requested: (*account).to_owned(), own: email });
                }
                match rest {
                    ["token"] => self.access_token(&email),
                    ["identity"] => self.id_token(&email, params),
                    _ => descend(account_entries(&email), rest).ok_or_else(not_found),
                }
            }
            ["instance", rest @ ..] => descend(self.instance(caller, number), rest).ok_or_else(not_found),
            _ => Err(not_found()),
        }
    }

    /// The account the caller acts as: its template's, else the project's default.
    fn email(&self, caller: &Caller) -> String {
        if caller.service_account.is_empty() {
            wharf_iam::default_service_account(&caller.project)
        } else {
            caller.service_account.to_ascii_lowercase()
        }
    }

    fn instance(&self, caller: &Caller, number: u64) -> Answer {
        let email = self.email(caller);
        Answer::Directory(vec![
            ("id", Answer::Text(caller.instance.clone())),
            ("region", Answer::Text(format!("projects/{number}/regions/{}", caller.region))),
            (
                "service-accounts",
                Answer::Accounts(vec![
                    ("default".to_owned(), account_entries(&email)),
                    (email.clone(), account_entries(&email)),
                ]),
            ),
            ("zone", Answer::Text(format!("projects/{number}/zones/{}-1", caller.region))),
        ])
    }

    /// Refuses an account that was disabled or deleted since the revision was deployed.
    fn check_usable(&self, email: &str) -> Result<Principal, MetadataError> {
        let principal = Principal::ServiceAccount(email.to_owned());
        match self.iam.account_usable(&principal) {
            Ok(true) => Ok(principal),
            Ok(false) => Err(MetadataError::AccountDisabled(email.to_owned())),
            Err(e) => Err(MetadataError::Token { account: email.to_owned(), reason: e.to_string() }),
        }
    }

    /// `.../token`: a Wharf access token for the account, the one handed out last while it
    /// has long enough to live.
    fn access_token(&self, email: &str) -> Result<Answer, MetadataError> {
        let principal = self.check_usable(email)?;
        let now = unix_now();
        let mut tokens = self.access_tokens.lock().unwrap_or_else(|p| p.into_inner());
        let reusable = tokens.get(email).filter(|t| t.expires_at - now >= ACCESS_TOKEN_REUSE_MIN_SECS).filter(|t| {
            // Still accepted (an account deleted and created again lost its tokens).
            self.iam.authenticate(Some(&format!("Bearer {}", t.token))).is_ok_and(|p| p == principal)
        });
        let token = match reusable {
            Some(token) => token.clone(),
            None => {
                let minted = self
                    .iam
                    .mint_access_token(&principal, ACCESS_TOKEN_LIFETIME_SECS)
                    .map_err(|e| MetadataError::Token { account: email.to_owned(), reason: e.to_string() })?;
                tokens.insert(email.to_owned(), minted.clone());
                minted
            }
        };
        Ok(Answer::Json(json!({
            "access_token": token.token,
            "expires_in": (token.expires_at - now).max(0),
            "token_type": "Bearer",
        })))
    }

    /// `.../identity?audience=AUD`: a Wharf ID token for the account.
    fn id_token(&self, email: &str, params: &Params) -> Result<Answer, MetadataError> {
        let audience = params.audience.as_deref().filter(|a| !a.is_empty()).ok_or_else(|| {
            MetadataError::BadRequest(
                "non-empty audience parameter required: ?audience=URL of the service the token is for".to_owned(),
            )
        })?;
        if let Some(format) = params.format.as_deref().filter(|f| !matches!(*f, "standard" | "full")) {
            return Err(MetadataError::BadRequest(format!(
                "format={format:?} is not supported: use format=standard or format=full"
            )));
        }
        let principal = self.check_usable(email)?;
        let (token, _) = self
            .iam
            .issuer
            .sign_id_token(&principal, audience)
            .map_err(|e| MetadataError::Token { account: email.to_owned(), reason: e.to_string() })?;
        tracing::debug!(account = %email, audience, "ID token issued to an instance");
        Ok(Answer::Text(token))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn project(caller: &Caller, number: u64) -> Answer {
    Answer::Directory(vec![
        ("numeric-project-id", Answer::Text(number.to_string())),
        ("project-id", Answer::Text(caller.project.clone())),
    ])
}

/// An account's entries as a directory listing shows them; `token` and `identity` are
/// answered on their own (they mint), not in recursive listings.
fn account_entries(email: &str) -> Answer {
    Answer::Directory(vec![
        ("aliases", Answer::List(vec!["default".to_owned()])),
        ("email", Answer::Text(email.to_owned())),
        ("scopes", Answer::List(vec![CLOUD_PLATFORM_SCOPE.to_owned()])),
    ])
}

/// The answer below `answer` at `path`.
fn descend(answer: Answer, path: &[&str]) -> Option<Answer> {
    let Some((first, rest)) = path.split_first() else { return Some(answer) };
    let child = match answer {
        Answer::Directory(entries) => entries.into_iter().find(|(name, _)| name == first).map(|(_, a)| a),
        Answer::Accounts(entries) => entries.into_iter().find(|(name, _)| name == first).map(|(_, a)| a),
        _ => None,
    }?;
    descend(child, rest)
}

/// Renders a value as Google's server does: scalars as text, directories as listings or (with
/// `recursive=true`) JSON, `alt` overriding.
fn render(answer: &Answer, params: &Params) -> Response {
    let json_wanted = match params.alt.as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => matches!(answer, Answer::Json(_)) || (answer.is_directory() && params.recursive),
    };
    if json_wanted {
        let value = if answer.is_directory() && !params.recursive { json!(answer.listing()) } else { answer.to_json() };
        return reply(StatusCode::OK, JSON, value.to_string());
    }
    let text = match answer {
        Answer::Text(text) => text.clone(),
        Answer::List(items) => items.iter().map(|item| format!("{item}\n")).collect(),
        Answer::Json(value) => value.to_string(),
        directory => directory.listing().into_iter().map(|line| line + "\n").collect(),
    };
    reply(StatusCode::OK, TEXT, text)
}

#[cfg(test)]
mod tests;
