//! Transports between runners.
//!
//! * `in_process` (feature `memory`): runners of one process (tests, `MemoryCluster`).
//!
//! The gRPC transport (`transport::grpc`) arrives with its issue behind the `grpc` feature.

pub use cruster_transport::{ReplyStream, RunnerInbound, Runners};

/// Runners in one process talking directly (feature `memory`).
#[cfg(feature = "memory")]
pub mod in_process {
    pub use cruster_storage_memory::{InProcessNetwork, InProcessRunners};
}
