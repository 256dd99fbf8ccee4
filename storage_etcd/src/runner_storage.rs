//! The [`RunnerStorage`] and [`RunnerHealth`] ports of [`EtcdRunnerStorage`], each method
//! handing over to the file of its family (`registration`, `shard_locks`,
//! `membership_watch`).

use std::time::Duration;

use async_trait::async_trait;
use cruster_runner_storage::{Runner, RunnerHealth, RunnerStorage};
use cruster_types::{ClusterError, MachineId, RunnerAddress, ShardId};
use futures::stream::BoxStream;

use crate::config::EtcdRunnerStorage;

#[async_trait]
impl RunnerStorage for EtcdRunnerStorage {
    async fn register(
        &self,
        address: &RunnerAddress,
        weight: u32,
        ttl: Duration,
    ) -> Result<MachineId, ClusterError> {
        self.do_register(address, weight, ttl).await
    }

    /// Renews the runner's lease. Its TTL stays the one it was granted with.
    async fn keep_alive(
        &self,
        address: &RunnerAddress,
        _ttl: Duration,
    ) -> Result<bool, ClusterError> {
        self.do_keep_alive(address).await
    }

    async fn unregister(&self, address: &RunnerAddress) -> Result<(), ClusterError> {
        self.do_unregister(address).await
    }

    async fn runners(&self) -> Result<Vec<Runner>, ClusterError> {
        self.do_runners().await
    }

    async fn watch_runners(
        &self,
    ) -> Result<BoxStream<'static, Result<Vec<Runner>, ClusterError>>, ClusterError> {
        self.do_watch_runners().await
    }

    async fn acquire_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        self.do_acquire_shards(owner, shards, ttl).await
    }

    async fn refresh_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        self.do_refresh_shards(owner, shards, ttl).await
    }

    async fn release_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), ClusterError> {
        self.do_release_shards(owner, shards).await
    }

    async fn shard_owner(&self, shard: &ShardId) -> Result<Option<RunnerAddress>, ClusterError> {
        self.do_shard_owner(shard).await
    }

    /// The TTL etcd granted the last lease asked for with this TTL (etcd raises short
    /// ones to its minimum); before any grant, the TTL that would be asked for: the
    /// configured lease TTL, or `requested` rounded up to whole seconds if longer.
    fn granted_lock_ttl(&self, requested: Duration) -> Duration {
        let asked = self.asked_secs(requested);
        let granted = self
            .local
            .lock()
            .granted_secs
            .get(&asked)
            .copied()
            .unwrap_or(asked);
        Duration::from_secs(u64::try_from(granted).unwrap_or(0))
    }
}

#[async_trait]
impl RunnerHealth for EtcdRunnerStorage {
    /// Alive while the runner key exists (its lease has not lapsed). An etcd that does not
    /// answer gives `false`, logged.
    async fn is_alive(&self, address: &RunnerAddress) -> bool {
        self.do_is_alive(address).await
    }
}
