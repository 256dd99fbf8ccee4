//! [`GrpcRunnerHealth`]: whether a runner is alive, by pinging it over gRPC.

use std::sync::Arc;

use async_trait::async_trait;
use cruster_runner_storage::RunnerHealth;
use cruster_transport::Runners;
use cruster_types::RunnerAddress;

use crate::client::GrpcRunners;

/// `RunnerHealth` by gRPC ping: a runner is alive when it answers a ping within the
/// client's timeouts. Shares the client's pooled connections.
///
/// ```
/// # #[tokio::main] async fn main() {
/// use std::sync::Arc;
/// use cruster_runner_storage::RunnerHealth;
/// use cruster_transport_grpc::{GrpcRunnerHealth, GrpcRunners};
/// use cruster_types::RunnerAddress;
///
/// let grpc_runners = Arc::new(GrpcRunners::new());
/// let health = GrpcRunnerHealth::new(grpc_runners.clone());
/// assert!(!health.is_alive(&RunnerAddress::new("127.0.0.1", 1)).await);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcRunnerHealth {
    runners: Arc<GrpcRunners>,
}

impl GrpcRunnerHealth {
    /// Health checks through `runners`' connections.
    pub fn new(runners: Arc<GrpcRunners>) -> Self {
        GrpcRunnerHealth { runners }
    }
}

#[async_trait]
impl RunnerHealth for GrpcRunnerHealth {
    async fn is_alive(&self, address: &RunnerAddress) -> bool {
        self.runners.ping(address).await.is_ok()
    }
}
