//! The one error type of the image layer. Variants mirror the distribution spec's error codes
//! where one applies, so the registry can map them without guessing.

use std::path::PathBuf;

use crate::digest::Digest;
use crate::reference::ReferenceError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("blob {digest} is not known to repository {repo}")]
    BlobUnknown { repo: String, digest: Digest },
    #[error("content does not match digest {expected}: it hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{0}")]
    DigestInvalid(String),
    #[error(transparent)]
    ManifestInvalid(#[from] crate::manifest::ManifestError),
    #[error("manifest references {digest}, which is not in repository {repo}; push it first")]
    ManifestBlobUnknown { repo: String, digest: Digest },
    #[error("manifest {reference} is not known to repository {repo}")]
    ManifestUnknown { repo: String, reference: String },
    #[error("{0}")]
    NameInvalid(ReferenceError),
    #[error("repository {0} is not known")]
    NameUnknown(String),
    #[error("{0}")]
    TagInvalid(ReferenceError),
    #[error("upload {0} is not known (it was finished, cancelled or never started)")]
    UploadUnknown(String),
    #[error(
        "chunk starts at byte {got}, but the upload has {expected} bytes; send the chunk that starts at {expected}"
    )]
    UploadOutOfOrder { expected: u64, got: u64 },
    #[error(
        "the upload would exceed the registry's blob size limit of {limit} bytes (it has {size} bytes and the \
         request sends more); push smaller layers or raise the server's --max-blob-size"
    )]
    BlobTooLarge { size: u64, limit: u64 },
    #[error(
        "the registry has {limit} upload sessions open, its limit; finish or cancel uploads, or wait for \
         abandoned ones to expire"
    )]
    TooManyUploads { limit: u64 },
    #[error("{0}")]
    ReferenceInvalid(ReferenceError),
    #[error("pulling {reference} failed: {reason}")]
    Pull { reference: String, reason: String },
    #[error("unsafe layer entry {entry:?} in {layer}: {reason}")]
    UnsafeLayer { layer: Digest, entry: String, reason: &'static str },
    #[error("layer {layer} is refused at entry {entry:?}: it goes past {limit}")]
    LayerLimit { layer: Digest, entry: String, limit: crate::snapshot::LimitExceeded },
    #[error("unpacking layer {layer} failed at {entry:?}")]
    Unpack {
        layer: Digest,
        entry: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    ImageFile(#[from] crate::hostfile::HostFileError),
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Store(#[from] wharf_store::StoreError),
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { op, path, source }
    }
}

impl From<wharf_store::rusqlite::Error> for ImageError {
    fn from(e: wharf_store::rusqlite::Error) -> ImageError {
        ImageError::Store(wharf_store::StoreError::Query(e))
    }
}
