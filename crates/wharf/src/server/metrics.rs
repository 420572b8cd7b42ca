//! The server's metrics surface: `GET /metrics` in Prometheus' text format on
//! `--metrics-addr` (off unless set; no authentication, so bind it to loopback or a private
//! network), and the layer that counts requests to the admin API and the registry. The
//! registry itself is [`wharf_logging::metrics::Metrics`], shared through
//! [`super::Platform::metrics`] for in-process readers.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use wharf_logging::metrics::{Metrics, Surface, render};

/// The `/metrics` endpoint.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    let text = render(&metrics.snapshot());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Counts every request `router` answers under `surface`, by method and status class.
pub fn counted(router: Router, metrics: Arc<Metrics>, surface: Surface) -> Router {
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let metrics = metrics.clone();
        async move {
            let method = request.method().clone();
            let response = next.run(request).await;
            metrics.record_surface(surface, method.as_str(), response.status().as_u16());
            response
        }
    }))
}
