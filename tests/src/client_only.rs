//! [`ClientOnlyRunnerStorage`]: a runner storage wrapper that makes a `ShardingImpl` a pure
//! client of a cluster — it watches the cluster's membership and routes to the runners, but
//! never registers, so no shard is ever assigned to it.
//!
//! The runtime has no client-only mode today: a runner with a runner storage registers and
//! takes its share of the shards. A test driver that must survive every fault it injects
//! (it is the thing counting what was acknowledged) cannot be one of the runners, so it
//! runs a `ShardingImpl` built on this wrapper instead.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cruster::ports::runner_storage::{Runner, RunnerStorage};
use cruster::types::{MachineId, RunnerAddress, ShardId};
use cruster::ClusterError;
use futures::stream::BoxStream;

/// The machine id a client-only runner uses for its snowflakes: the last one, which the
/// runner storages hand out only to the 1024th concurrent runner.
pub const CLIENT_MACHINE_ID: u16 = MachineId::MAX;

/// Membership reads go to `inner`; registration and shard locks are answered locally
/// (registered, kept alive, holding nothing), so the cluster never learns of this runner.
///
/// Give each client-only runner of one cluster its own machine id if there are several
/// (their snowflake request ids would collide otherwise): see [`Self::with_machine_id`].
pub struct ClientOnlyRunnerStorage {
    inner: Arc<dyn RunnerStorage>,
    machine_id: MachineId,
}

impl ClientOnlyRunnerStorage {
    /// A client-only view of `inner`, with machine id [`CLIENT_MACHINE_ID`].
    pub fn new(inner: Arc<dyn RunnerStorage>) -> Self {
        ClientOnlyRunnerStorage {
            inner,
            machine_id: MachineId::wrapping(u64::from(CLIENT_MACHINE_ID)),
        }
    }

    /// Uses `machine_id` for this client's snowflakes instead.
    pub fn with_machine_id(mut self, machine_id: MachineId) -> Self {
        self.machine_id = machine_id;
        self
    }
}

#[async_trait]
impl RunnerStorage for ClientOnlyRunnerStorage {
    async fn register(
        &self,
        _address: &RunnerAddress,
        _weight: u32,
        _ttl: Duration,
    ) -> Result<MachineId, ClusterError> {
        Ok(self.machine_id)
    }

    async fn keep_alive(
        &self,
        _address: &RunnerAddress,
        _ttl: Duration,
    ) -> Result<bool, ClusterError> {
        Ok(true)
    }

    async fn unregister(&self, _address: &RunnerAddress) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn runners(&self) -> Result<Vec<Runner>, ClusterError> {
        self.inner.runners().await
    }

    async fn watch_runners(
        &self,
    ) -> Result<BoxStream<'static, Result<Vec<Runner>, ClusterError>>, ClusterError> {
        self.inner.watch_runners().await
    }

    async fn acquire_shards(
        &self,
        _owner: &RunnerAddress,
        _shards: &[ShardId],
        _ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        Ok(Vec::new())
    }

    async fn refresh_shards(
        &self,
        _owner: &RunnerAddress,
        _shards: &[ShardId],
        _ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        Ok(Vec::new())
    }

    async fn release_shards(
        &self,
        _owner: &RunnerAddress,
        _shards: &[ShardId],
    ) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn shard_owner(&self, shard: &ShardId) -> Result<Option<RunnerAddress>, ClusterError> {
        self.inner.shard_owner(shard).await
    }

    fn granted_lock_ttl(&self, requested: Duration) -> Duration {
        self.inner.granted_lock_ttl(requested)
    }
}
