//! Wharf's resources in the shape of Cloud Run Admin API v2 (`google.cloud.run.v2`), shared by
//! the server and the CLI.
//!
//! - [`types`]: `Service`, `RevisionTemplate`, `Container`, `Revision`, `Condition`,
//!   `TrafficTarget`, `Operation`, ... with the JSON field names and encodings the API uses
//!   (camelCase, int64 as strings, durations as `"300s"`, timestamps in RFC 3339).
//! - [`enums`]: enum values by name, and the integer encoding clients may ask for.
//! - [`domains`]: Cloud Run's v1 `DomainMapping` and which domain names may be mapped.
//! - [`code`]: `google.rpc.Code`, the one place error codes have numbers and names.
//! - [`fields`]: strict reading of request bodies: unknown and unsupported fields refused by name.
//! - [`names`]: resource names (`projects/p/locations/l/services/s`) and Cloud Run's naming rules.
//!
//! This crate does no I/O.

pub mod code;
pub mod domains;
pub mod duration;
pub mod enums;
pub mod fields;
pub mod jobs;
pub mod knative;
pub mod names;
pub mod types;

pub use code::Code;
pub use names::{NameError, ResourceName, validate_service_name};
pub use types::*;
