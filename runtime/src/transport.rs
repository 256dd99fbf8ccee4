//! Transports between runners.
//!
//! * `in_process` (feature `memory`): runners of one process (tests, `MemoryCluster`).
//! * `grpc` (feature `grpc`): runners in separate processes, over gRPC.

pub use cruster_transport::{ReplyStream, RunnerInbound, Runners};

/// Runners in one process talking directly (feature `memory`).
#[cfg(feature = "memory")]
pub mod in_process {
    pub use cruster_storage_memory::{InProcessNetwork, InProcessRunners};
}

/// Runners in separate processes talking gRPC (feature `grpc`).
///
/// ```no_run
/// # async fn run(sharding: std::sync::Arc<cruster::sharding_impl::ShardingImpl>) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use cruster::transport::grpc::{GrpcRunnerHealth, GrpcRunnerServer, GrpcRunners};
///
/// let grpc_runners = Arc::new(GrpcRunners::new());
/// let health = GrpcRunnerHealth::new(grpc_runners.clone());
/// cruster::tonic::transport::Server::builder()
///     .add_service(GrpcRunnerServer::new(sharding.clone()).into_service())
///     .serve("0.0.0.0:9000".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "grpc")]
pub mod grpc {
    pub use cruster_transport_grpc::*;
}
