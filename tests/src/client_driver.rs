//! [`ClientDriver`]: a client-only runner in this process (`runner_weight: 0`) on the
//! cluster's PostgreSQL and membership, talking gRPC, with a gRPC server of its own so the
//! runners push stored replies to it. The fault suite and the cluster bench drive their
//! traffic through one: it must outlive every fault they inject, so it is not one of the
//! runners and owns no shard.

use std::sync::Arc;

use cruster::ports::runner_storage::RunnerStorage;
use cruster::prelude::*;
use cruster::sqlx::PgPool;
use cruster::storage::sql_message::SqlMessageStorage;
use cruster::storage::sql_workflow::SqlWorkflowStorage;
use cruster::storage::sql_workflow_engine::SqlWorkflowEngine;
use cruster::tonic::transport::server::TcpIncoming;
use cruster::tonic::transport::Server;
use cruster::transport::grpc::{GrpcRunnerHealth, GrpcRunnerServer, GrpcRunners};
use cruster::types::RunnerAddress;

/// A started client-only runner and its gRPC server.
pub struct ClientDriver {
    /// The runner: build entity and workflow clients on it.
    pub sharding: Arc<ShardingImpl>,
    server: tokio::task::JoinHandle<()>,
}

impl ClientDriver {
    /// Starts a client-only runner listening on `listener` (its advertised address is the
    /// listener's), configured by `config` (its address and weight are set here), storing
    /// in `pool`. With `workflows`, it also gets the SQL workflow storage and engine, which
    /// `WorkflowClient::poll` reads.
    ///
    /// # Errors
    /// Building or starting the runner failed, or the listener has no local address.
    pub async fn start(
        listener: tokio::net::TcpListener,
        config: ShardingConfig,
        membership: Arc<dyn RunnerStorage>,
        pool: &PgPool,
        workflows: bool,
    ) -> Result<ClientDriver, ClusterError> {
        let port = listener
            .local_addr()
            .map_err(|err| ClusterError::InvalidConfig {
                field: "listener".into(),
                reason: format!("the driver's listener has no local address: {err}"),
            })?
            .port();
        let grpc = Arc::new(GrpcRunners::new());
        let mut builder = ShardingImpl::builder()
            .config(ShardingConfig {
                runner_address: RunnerAddress::new("127.0.0.1", port),
                // Client-only: in the membership (replies are pushed to it), owning no shard.
                runner_weight: 0,
                ..config
            })
            .runners(grpc.clone())
            .runner_storage(membership)
            .runner_health(Arc::new(GrpcRunnerHealth::new(grpc)))
            .message_storage(Arc::new(SqlMessageStorage::new(pool.clone())));
        if workflows {
            builder = builder
                .workflow_storage(Arc::new(SqlWorkflowStorage::new(pool.clone())))
                .workflow_engine(Arc::new(SqlWorkflowEngine::new(pool.clone())));
        }
        let sharding = builder.build()?;
        let service = GrpcRunnerServer::new(sharding.clone()).into_service();
        let server = tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let _ = Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        if let Err(err) = sharding.start().await {
            server.abort();
            return Err(err);
        }
        Ok(ClientDriver { sharding, server })
    }

    /// Shuts the runner down and stops its server.
    ///
    /// # Errors
    /// As `ShardingImpl::shutdown`.
    pub async fn stop(self) -> Result<(), ClusterError> {
        let stopped = self.sharding.shutdown().await;
        self.server.abort();
        stopped
    }
}
