//! The registry's error responses: every failure is classified here, once, into an HTTP status
//! and a distribution-spec error code with a message that says what went wrong.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wharf_iam::AuthError;
use wharf_image::ImageError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Denied(wharf_iam::Denied),
    #[error("cannot read the IAM policy")]
    Policy(#[source] wharf_iam::policy::PolicyError),
    #[error("{0}")]
    BadRequest(&'static str, String),
    #[error("{0}")]
    RangeInvalid(String),
    #[error("{method} is not supported on {path}")]
    Unsupported { method: String, path: String },
    #[error("{0}")]
    NotFound(String),
}

impl RegistryError {
    fn classify(&self) -> (StatusCode, &'static str) {
        use ImageError as I;
        match self {
            RegistryError::Image(e) => match e {
                I::BlobUnknown { .. } => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
                I::DigestMismatch { .. } | I::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
                I::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
                I::ManifestBlobUnknown { .. } => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
                I::ManifestUnknown { .. } => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
                I::NameInvalid(_) | I::ReferenceInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
                I::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
                I::TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
                I::UploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
                I::UploadOutOfOrder { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
                I::BlobTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
                I::TooManyUploads { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
                I::ImageFile(_)
                | I::Pull { .. }
                | I::UnsafeLayer { .. }
                | I::LayerLimit { .. }
                | I::Unpack { .. }
                | I::Io { .. }
                | I::Task(_)
                | I::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            },
            RegistryError::Auth(AuthError::Store(_) | AuthError::Random) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN")
            }
            RegistryError::Auth(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            RegistryError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            RegistryError::Policy(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            RegistryError::BadRequest(code, _) => (StatusCode::BAD_REQUEST, code),
            RegistryError::RangeInvalid(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            RegistryError::Unsupported { .. } => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.classify();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = ?self, "registry request failed");
            "internal error; see the wharf server log".to_owned()
        } else {
            self.to_string()
        };
        let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"wharf\""));
        }
        response
    }
}
