//! Storage backends, by module path of the user contract.
//!
//! * `memory` (feature `memory`, default): every port in memory.
//!
//! SQL (`sql_message`, `sql_workflow`, `sql_workflow_engine`) and etcd (`etcd_runner`)
//! backends arrive with their issues and will appear here behind the `postgres`, `sqlite`
//! and `etcd` features.

/// In-memory backends (feature `memory`).
#[cfg(feature = "memory")]
pub mod memory {
    pub use cruster_storage_memory::*;
}
