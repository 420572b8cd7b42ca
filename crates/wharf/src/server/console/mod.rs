//! The web console at `/console` on the API address: a few hand-written HTML, CSS and
//! JavaScript files embedded in the binary ([`ASSETS`]; no build step, no CDN) and the
//! sign-in endpoints (`/console/session`) that trade a Wharf credential for a session cookie
//! ([`sessions`], kept across restarts), failed sign-ins limited per client address
//! ([`rate_limit`]). The same routes are served on the HTTPS ingress for `--console-host`
//! ([`https`]).
//!
//! The console holds no authority of its own: its JavaScript calls the same REST API as the
//! CLI, authenticated by the session cookie plus a CSRF token, so every page and action goes
//! through the API's authorization and its errors are the API's `google.rpc.Status`.
//! Every console response carries a strict Content-Security-Policy (no inline script or
//! style, nothing from another origin), `nosniff`, `no-referrer` and `frame-ancestors 'none'`.

pub mod https;
pub mod rate_limit;
pub mod sessions;

use axum::Router;
use axum::body::Bytes;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use wharf_iam::AuthError;

use super::Platform;
use super::api::ApiError;

/// The console's Content-Security-Policy: only this origin's scripts, styles and API.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// One embedded file: its name under `/console/assets/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_str!(concat!("assets/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the console serves, compiled into the binary.
const ASSETS: &[Asset] = &[
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("services.js", JS),
    asset!("service.js", JS),
    asset!("charts.js", JS),
    asset!("jobs.js", JS),
    asset!("resources.js", JS),
];

const INDEX_HTML: &str = include_str!("assets/index.html");

/// The console's routes; public (sign-in is how a browser gets a credential), each answer
/// with the console's security headers.
pub fn routes() -> Router<Platform> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/assets/{name}", get(asset))
        .route("/console/session", get(session).post(sign_in).delete(sign_out))
        .layer(middleware::from_fn(security_headers))
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML).into_response()
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("/console/assets/{name} is not a file of the console")))?;
    Ok(([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response())
}

/// Whether the browser reached the console over HTTPS (directly or through a proxy that
/// says so): then the cookie is `Secure`. Trusting these headers can only add `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    header("x-forwarded-proto").eq_ignore_ascii_case("https") || header("origin").starts_with("https://")
}

/// `GET /console/session`: who is signed in, and the CSRF token the console sends with
/// every change. 401 without a live session.
async fn session(State(platform): State<Platform>, headers: HeaderMap) -> Result<Response, ApiError> {
    let id = sessions::session_cookie(&headers).ok_or(ApiError::Cookie(sessions::CookieError::UnknownSession))?;
    let view = platform
        .console_sessions
        .view(id)
        .map_err(|e| ApiError::Cookie(sessions::CookieError::Store(e)))?
        .ok_or(ApiError::Cookie(sessions::CookieError::UnknownSession))?;
    Ok(axum::Json(view).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    credential: String,
}

/// `POST /console/session` with `{"credential": "..."}`: checks the credential as the API
/// does, starts a session and sets its cookie. Only JSON from this origin is taken, so
/// another site cannot sign a browser into an account of its choosing. A client address with
/// too many recent failures is refused (429) before its credential is even looked at.
async fn sign_in(
    State(platform): State<Platform>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Err(refused) = platform.console_sign_ins.check(client.ip(), Instant::now()) {
        tracing::warn!(client = %client.ip(), retry_after = refused.retry_after_seconds, "console sign-in refused: too many failures");
        super::api::audit(
            &platform,
            "too many failed sign-ins",
            &axum::http::Method::POST,
            "/console/session",
            StatusCode::TOO_MANY_REQUESTS,
        )
        .await;
        return Err(refused.into());
    }
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !json.starts_with("application/json") {
        return Err(ApiError::InvalidArgument(
            "sign in with a JSON body {\"credential\": \"...\"} and Content-Type: application/json".into(),
        ));
    }
    sessions::check_same_origin(&headers)?;
    let request: SignIn = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidArgument(format!("the sign-in body must be {{\"credential\": \"...\"}}: {e}")))?;
    // A pasted "Bearer <token>" is the token.
    let credential = request.credential.trim();
    let credential = credential.strip_prefix("Bearer ").map_or(credential, str::trim);
    if credential.is_empty() {
        return Err(ApiError::InvalidArgument(
            "credential is empty: paste the owner token (wharf auth print-access-token) or a user's token".into(),
        ));
    }
    let principal = match platform.iam.authenticate(Some(&format!("Bearer {credential}"))) {
        Ok(principal) => principal,
        Err(e) => {
            let status = if matches!(e, AuthError::Store(_) | AuthError::Random) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                platform.console_sign_ins.failed(client.ip(), Instant::now());
                StatusCode::UNAUTHORIZED
            };
            super::api::audit(&platform, "invalid credentials", &axum::http::Method::POST, "/console/session", status)
                .await;
            return Err(e.into());
        }
    };
    let name = principal.name();
    let new = platform
        .console_sessions
        .create(credential, name.clone())
        .map_err(|e| ApiError::Internal(format!("cannot create a session id: {e}")))?;
    super::api::audit(&platform, &name, &axum::http::Method::POST, "/console/session", StatusCode::OK).await;
    tracing::info!(principal = %name, "console sign-in");
    let view = sessions::SessionView {
        principal: name,
        csrf_token: new.csrf_token,
        expires_in_seconds: sessions::IDLE_TIMEOUT.as_secs(),
    };
    Ok(([(header::SET_COOKIE, sessions::set_cookie(&new.id, over_https(&headers)))], axum::Json(view)).into_response())
}

/// `DELETE /console/session`: ends the session (with its CSRF token) and clears the cookie.
async fn sign_out(State(platform): State<Platform>, headers: HeaderMap) -> Result<Response, ApiError> {
    // The same check as any change made with the cookie: the CSRF token, same origin.
    platform
        .console_sessions
        .authenticate_cookie(&axum::http::Method::DELETE, &headers)?
        .ok_or(ApiError::Cookie(sessions::CookieError::UnknownSession))?;
    if let Some(id) = sessions::session_cookie(&headers) {
        platform.console_sessions.remove(id).map_err(|e| ApiError::Cookie(sessions::CookieError::Store(e)))?;
    }
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, sessions::clear_cookie(over_https(&headers)))]).into_response())
}
