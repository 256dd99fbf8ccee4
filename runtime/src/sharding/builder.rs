//! [`ShardingImplBuilder`]: a short way to build a [`ShardingImpl`] for the common cases.

use std::sync::Arc;

use cruster_message_storage::MessageStorage;
use cruster_runner_storage::{RunnerHealth, RunnerStorage};
use cruster_sharding::ShardAssignment;
use cruster_transport::Runners;
use cruster_types::ClusterError;
use cruster_workflow_storage::{WorkflowEngine, WorkflowStorage};

use crate::clock::Clock;
use crate::config::ShardingConfig;
use crate::metrics::ClusterMetrics;
use crate::sharding::assignment::RendezvousAssignment;
use crate::sharding::sharding_impl::ShardingImpl;

/// Builds a [`ShardingImpl`]; every port not given is left out (or, with
/// [`ShardingImplBuilder::memory`], filled with a memory backend).
///
/// ```
/// use cruster::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ClusterError> {
/// let sharding = ShardingImpl::builder().memory().build()?;
/// sharding.start().await?;
/// assert!(sharding.message_storage().is_some());
/// sharding.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct ShardingImplBuilder {
    config: Option<ShardingConfig>,
    clock: Option<Clock>,
    runners: Option<Arc<dyn Runners>>,
    runner_storage: Option<Arc<dyn RunnerStorage>>,
    runner_health: Option<Arc<dyn RunnerHealth>>,
    message_storage: Option<Arc<dyn MessageStorage>>,
    workflow_storage: Option<Arc<dyn WorkflowStorage>>,
    workflow_engine: Option<Arc<dyn WorkflowEngine>>,
    metrics: Option<Arc<ClusterMetrics>>,
    assignment: Option<Arc<dyn ShardAssignment>>,
}

impl ShardingImpl {
    /// Starts a [`ShardingImplBuilder`].
    pub fn builder() -> ShardingImplBuilder {
        ShardingImplBuilder::default()
    }
}

impl ShardingImplBuilder {
    /// The configuration (default `ShardingConfig::default()`).
    pub fn config(mut self, config: ShardingConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// The clock business time is read from (default: the configuration's, which is the
    /// system clock unless set). Pass a [`VirtualClock`](crate::clock::VirtualClock) in tests.
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = Some(clock.into());
        self
    }

    /// The transport to other runners.
    pub fn runners(mut self, runners: Arc<dyn Runners>) -> Self {
        self.runners = Some(runners);
        self
    }

    /// Membership and shard locks (without it the runner is alone and owns every shard).
    pub fn runner_storage(mut self, storage: Arc<dyn RunnerStorage>) -> Self {
        self.runner_storage = Some(storage);
        self
    }

    /// Health checks of other runners.
    pub fn runner_health(mut self, health: Arc<dyn RunnerHealth>) -> Self {
        self.runner_health = Some(health);
        self
    }

    /// Message storage (needed for persisted messages and workflows).
    pub fn message_storage(mut self, storage: Arc<dyn MessageStorage>) -> Self {
        self.message_storage = Some(storage);
        self
    }

    /// Workflow journal storage.
    pub fn workflow_storage(mut self, storage: Arc<dyn WorkflowStorage>) -> Self {
        self.workflow_storage = Some(storage);
        self
    }

    /// Workflow engine storage.
    pub fn workflow_engine(mut self, engine: Arc<dyn WorkflowEngine>) -> Self {
        self.workflow_engine = Some(engine);
        self
    }

    /// Metrics (default: unregistered).
    pub fn metrics(mut self, metrics: Arc<ClusterMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A custom shard-assignment strategy (default: rendezvous hashing).
    pub fn assignment(mut self, assignment: Arc<dyn ShardAssignment>) -> Self {
        self.assignment = Some(assignment);
        self
    }

    /// Fills every storage port not given yet with a memory backend, and the transport
    /// with an in-process one (a lone node: no runner storage is added).
    #[cfg(feature = "memory")]
    pub fn memory(mut self) -> Self {
        use cruster_storage_memory::{
            InProcessNetwork, MemoryMessageStorage, MemoryWorkflowEngine, MemoryWorkflowStorage,
        };
        if self.runners.is_none() {
            self.runners = Some(Arc::new(InProcessNetwork::new().runners()));
        }
        if self.message_storage.is_none() {
            self.message_storage = Some(Arc::new(MemoryMessageStorage::new()));
        }
        if self.workflow_storage.is_none() {
            self.workflow_storage = Some(Arc::new(MemoryWorkflowStorage::new()));
        }
        if self.workflow_engine.is_none() {
            self.workflow_engine = Some(Arc::new(MemoryWorkflowEngine::new()));
        }
        self
    }

    /// Builds the runner (not started).
    ///
    /// # Errors
    /// `InvalidConfig` for a bad configuration or a missing transport.
    pub fn build(self) -> Result<Arc<ShardingImpl>, ClusterError> {
        let runners = self.runners.ok_or_else(|| ClusterError::InvalidConfig {
            field: "runners".into(),
            reason: "a ShardingImpl needs a transport: call .runners(..) or .memory()".into(),
        })?;
        let mut config = self.config.unwrap_or_default();
        if let Some(clock) = self.clock {
            config.clock = clock;
        }
        ShardingImpl::with_assignment(
            Arc::new(config),
            runners,
            self.runner_storage,
            self.runner_health,
            self.message_storage,
            self.workflow_storage,
            self.workflow_engine,
            self.metrics
                .unwrap_or_else(|| Arc::new(ClusterMetrics::unregistered())),
            self.assignment
                .unwrap_or_else(|| Arc::new(RendezvousAssignment)),
        )
    }
}
