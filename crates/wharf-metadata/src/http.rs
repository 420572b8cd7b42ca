//! The metadata HTTP server instances reach at `http://169.254.169.254` and
//! `http://metadata.google.internal`. Identity (tokens, project and instance attributes) is
//! not served yet: every path answers 404 with a body saying so, carrying the
//! `Metadata-Flavor: Google` header Google's libraries check. The identity work adds its
//! handlers to [`router`].

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;

/// The metadata server's routes.
pub fn router() -> Router {
    Router::new().fallback(not_implemented)
}

async fn not_implemented(uri: Uri) -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [("metadata-flavor", "Google"), (header::CONTENT_TYPE.as_str(), "text/plain; charset=utf-8")],
        format!("{}: Wharf's metadata server does not serve this yet (no instance identity)\n", uri.path()),
    )
}
