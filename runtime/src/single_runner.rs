//! [`SingleRunner`]: a one-node cluster that owns every shard.
//!
//! Memory backends by default; entities, workflows, singletons and cron register on
//! `runner.sharding()` exactly as on a production `ShardingImpl`.
//!
//! ```
//! use cruster::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ClusterError> {
//! let runner = SingleRunner::builder().build().await?;
//! assert!(!runner.sharding().owned_shards().is_empty());
//! runner.shutdown().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use cruster_message_storage::MessageStorage;
use cruster_storage_memory::{
    InProcessNetwork, MemoryMessageStorage, MemoryWorkflowEngine, MemoryWorkflowStorage,
};
use cruster_types::ClusterError;
use cruster_workflow_storage::{WorkflowEngine, WorkflowStorage};

use crate::config::ShardingConfig;
use crate::metrics::ClusterMetrics;
use crate::sharding_impl::ShardingImpl;

/// A one-node cluster. See the module docs.
pub struct SingleRunner {
    sharding: Arc<ShardingImpl>,
}

impl std::fmt::Debug for SingleRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleRunner").finish_non_exhaustive()
    }
}

impl SingleRunner {
    /// Starts building a single runner (memory backends unless told otherwise).
    pub fn builder() -> SingleRunnerBuilder {
        SingleRunnerBuilder::default()
    }

    /// The runner, to register entities, workflows, singletons and cron on.
    pub fn sharding(&self) -> &Arc<ShardingImpl> {
        &self.sharding
    }

    /// Graceful shutdown (see [`ShardingImpl::shutdown`]).
    ///
    /// # Errors
    /// As [`ShardingImpl::shutdown`].
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        self.sharding.shutdown().await
    }
}

/// Builder of a [`SingleRunner`].
#[derive(Default)]
pub struct SingleRunnerBuilder {
    config: Option<ShardingConfig>,
    message_storage: Option<Arc<dyn MessageStorage>>,
    workflow_storage: Option<Arc<dyn WorkflowStorage>>,
    workflow_engine: Option<Arc<dyn WorkflowEngine>>,
    metrics: Option<Arc<ClusterMetrics>>,
}

impl SingleRunnerBuilder {
    /// Sets the configuration (default: `ShardingConfig::default()`).
    pub fn config(mut self, config: ShardingConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Uses this message storage instead of memory.
    pub fn message_storage(mut self, storage: Arc<dyn MessageStorage>) -> Self {
        self.message_storage = Some(storage);
        self
    }

    /// Uses this workflow journal storage instead of memory.
    pub fn workflow_storage(mut self, storage: Arc<dyn WorkflowStorage>) -> Self {
        self.workflow_storage = Some(storage);
        self
    }

    /// Uses this workflow engine storage instead of memory.
    pub fn workflow_engine(mut self, engine: Arc<dyn WorkflowEngine>) -> Self {
        self.workflow_engine = Some(engine);
        self
    }

    /// Exports metrics through these (default: unregistered).
    pub fn metrics(mut self, metrics: Arc<ClusterMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds and starts the runner.
    ///
    /// # Errors
    /// `InvalidConfig` for a bad configuration; storage errors while starting.
    pub async fn build(self) -> Result<SingleRunner, ClusterError> {
        let config = Arc::new(self.config.unwrap_or_default());
        let network = InProcessNetwork::new();
        let message_storage = self
            .message_storage
            .unwrap_or_else(|| Arc::new(MemoryMessageStorage::new()));
        let workflow_storage = self
            .workflow_storage
            .unwrap_or_else(|| Arc::new(MemoryWorkflowStorage::new()));
        let workflow_engine = self
            .workflow_engine
            .unwrap_or_else(|| Arc::new(MemoryWorkflowEngine::new()));
        let sharding = ShardingImpl::new_with_engines(
            config.clone(),
            Arc::new(network.runners()),
            None,
            None,
            Some(message_storage),
            Some(workflow_storage),
            Some(workflow_engine),
            self.metrics
                .unwrap_or_else(|| Arc::new(ClusterMetrics::unregistered())),
        )?;
        network.register(config.runner_address.clone(), sharding.clone());
        sharding.start().await?;
        Ok(SingleRunner { sharding })
    }
}
