//! Wharf's embedded OCI registry: the distribution spec's HTTP API (pull, push, chunked and
//! cross-repository uploads, manifests, tags, catalog) on top of [`wharf_image::ImageStore`].
//!
//! Requests are parsed into a [`route::Route`] (repository names contain slashes, so the path
//! is split by hand, not by a router table), authenticated through [`wharf_iam::Iam`],
//! authorized (reads need `artifactregistry.repositories.downloadArtifacts`, pushes
//! `uploadArtifacts`, deletes `deleteArtifacts`, on [`SERVER_WIDE_PROJECT`]), then executed by
//! the handlers in [`handlers`]. Every failure becomes a spec error body in
//! [`error`]. This crate holds no state of its own.

mod error;
mod handlers;
mod route;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use wharf_iam::Iam;
use wharf_image::ImageStore;

pub use error::RegistryError;
pub use route::Route;

/// The registry and image store are server-wide, not per project: their permissions are
/// checked on this project's policy (bind `roles/run.developer` there to let someone push).
pub const SERVER_WIDE_PROJECT: &str = "default";

/// What the registry's handlers share.
#[derive(Debug, Clone)]
pub struct RegistryState {
    pub images: ImageStore,
    pub iam: Iam,
}

/// The registry's HTTP service, to be served on `--registry-addr`.
pub fn router(state: RegistryState) -> Router {
    Router::new().fallback(handlers::dispatch).layer(DefaultBodyLimit::disable()).with_state(Arc::new(state))
}
