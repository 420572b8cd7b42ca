//! Wharf's image layer.
//!
//! - [`digest`], [`reference`], [`manifest`]: the vocabulary (digests, names, manifest formats).
//! - [`blobs`]: the content-addressed blob directory.
//! - [`content`]: repositories, manifests, tags and uploads on top of the blobs and the state
//!   database; the embedded registry (crate `wharf-registry`) is an HTTP face on it.
//! - [`gc`]: removing blobs and snapshots no stored or pinned image needs.
//! - [`snapshot`]: layers unpacked once, safely, into shared snapshot directories.
//! - [`remote`] and [`resolve`]: turning a user's image reference into a pinned, locally stored
//!   image, pulling from a remote registry when the reference is not Wharf's own.
//! - [`archive`]: reading images from OCI layout directories and docker-archive tarballs.
//! - [`hostfile`]: reading files that come from images (an image's `/etc/passwd`, config
//!   blobs) on the host without following them out of the image or blocking on them.
//!
//! This crate does no HTTP serving and knows nothing of services or instances.

pub mod archive;
pub mod blobs;
pub mod content;
pub mod digest;
mod error;
pub mod gc;
pub mod hostfile;
pub mod manifest;
pub mod reference;
pub mod remote;
pub mod resolve;
pub mod snapshot;

pub use content::ImageStore;
pub use digest::Digest;
pub use error::ImageError;
pub use reference::ImageReference;
pub use resolve::{ResolvedImage, Resolver};
pub use snapshot::SnapshotStore;
