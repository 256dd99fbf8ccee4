//! A runner that cannot confirm its shard locks for a whole TTL stops serving them (another
//! runner may hold them by then), and takes them back once runner storage answers again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cruster::ports::runner_storage::{Runner, RunnerStorage};
use cruster::prelude::*;
use cruster::storage::memory::MemoryRunnerStorage;
use cruster::types::{MachineId, RunnerAddress, ShardId};
use futures::stream::BoxStream;
use support::eventually;

/// Runner storage that fails every call while `broken` is set (fault injection).
struct FlakyRunnerStorage {
    inner: MemoryRunnerStorage,
    broken: AtomicBool,
}

impl FlakyRunnerStorage {
    fn check(&self) -> Result<(), ClusterError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(ClusterError::PersistenceError {
                reason: "injected runner-storage outage".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl RunnerStorage for FlakyRunnerStorage {
    async fn register(
        &self,
        address: &RunnerAddress,
        weight: u32,
        ttl: Duration,
    ) -> Result<MachineId, ClusterError> {
        self.check()?;
        self.inner.register(address, weight, ttl).await
    }
    async fn keep_alive(
        &self,
        address: &RunnerAddress,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        self.check()?;
        self.inner.keep_alive(address, ttl).await
    }
    async fn unregister(&self, address: &RunnerAddress) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.unregister(address).await
    }
    async fn runners(&self) -> Result<Vec<Runner>, ClusterError> {
        self.check()?;
        self.inner.runners().await
    }
    async fn watch_runners(
        &self,
    ) -> Result<BoxStream<'static, Result<Vec<Runner>, ClusterError>>, ClusterError> {
        self.check()?;
        self.inner.watch_runners().await
    }
    async fn acquire_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        self.check()?;
        self.inner.acquire_shards(owner, shards, ttl).await
    }
    async fn refresh_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        self.check()?;
        self.inner.refresh_shards(owner, shards, ttl).await
    }
    async fn release_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.release_shards(owner, shards).await
    }
    async fn shard_owner(&self, shard: &ShardId) -> Result<Option<RunnerAddress>, ClusterError> {
        self.check()?;
        self.inner.shard_owner(shard).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_cannot_confirm_its_locks_stops_serving_them() {
    let storage = Arc::new(FlakyRunnerStorage {
        inner: MemoryRunnerStorage::new(),
        broken: AtomicBool::new(false),
    });
    let sharding = ShardingImpl::builder()
        .config(ShardingConfig {
            runner_lock_ttl: Duration::from_millis(300),
            ..Default::default()
        })
        .runner_storage(storage.clone())
        .memory()
        .build()
        .unwrap();
    sharding.start().await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || sharding.owned_shards().len()
            == 300)
        .await
    );

    storage.broken.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), || sharding
            .owned_shards()
            .is_empty())
        .await,
        "still serving {} shards without confirmed locks",
        sharding.owned_shards().len()
    );

    storage.broken.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || sharding.owned_shards().len()
            == 300)
        .await,
        "took back {} shards",
        sharding.owned_shards().len()
    );
    sharding.shutdown().await.unwrap();
}
