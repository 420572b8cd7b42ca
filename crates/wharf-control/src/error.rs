//! [`ControlError`]: why a command was refused or failed. The user-facing variants carry the
//! message that says what to fix; the internal ones keep their source. [`ControlError::code`]
//! is the one place a control-plane failure becomes a `google.rpc.Code`.

use wharf_api::Code;
use wharf_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// An `etag` did not match: someone else changed the resource.
    #[error("{0}")]
    Aborted(String),
    /// The state database failed.
    #[error("state database")]
    Store(#[from] StoreError),
    /// A stored value could not be read back (or a value could not be stored).
    #[error("stored {what} is not valid JSON")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A stored value names a state this version does not know.
    #[error("stored {what} has unknown state {value:?}")]
    UnknownState { what: &'static str, value: String },
}

impl From<wharf_store::rusqlite::Error> for ControlError {
    fn from(e: wharf_store::rusqlite::Error) -> ControlError {
        ControlError::Store(StoreError::Query(e))
    }
}

impl ControlError {
    /// The canonical code this failure is reported with.
    pub fn code(&self) -> Code {
        match self {
            ControlError::InvalidArgument(_) => Code::InvalidArgument,
            ControlError::NotFound(_) => Code::NotFound,
            ControlError::AlreadyExists(_) => Code::AlreadyExists,
            ControlError::FailedPrecondition(_) => Code::FailedPrecondition,
            ControlError::Aborted(_) => Code::Aborted,
            ControlError::Store(_) | ControlError::Json { .. } | ControlError::UnknownState { .. } => Code::Internal,
        }
    }

    pub(crate) fn json(what: &'static str) -> impl FnOnce(serde_json::Error) -> ControlError {
        move |source| ControlError::Json { what, source }
    }
}

/// Serializes a value for a JSON column.
pub(crate) fn to_json(what: &'static str, value: &impl serde::Serialize) -> Result<String, ControlError> {
    serde_json::to_string(value).map_err(ControlError::json(what))
}

/// Reads a JSON column inside a row mapper.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> wharf_store::rusqlite::Result<T> {
    use wharf_store::rusqlite::{Error, types::Type};
    serde_json::from_str(text).map_err(|e| Error::FromSqlConversionFailure(0, Type::Text, Box::new(e)))
}
