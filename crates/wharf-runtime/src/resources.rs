//! Resource limits: the types and their user syntax are the control plane's
//! (`wharf_control::backend::resources`); the runtime enforces them through cgroups.

pub use wharf_control::backend::resources::*;
