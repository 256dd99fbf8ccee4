//! A runner stops serving a shard before its lock can have expired for anyone else: from
//! when the last renewal was *sent*, with a margin, also when runner storage hangs instead
//! of failing; and takes its shards back once runner storage answers again.
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

/// Runner storage that fails every call while `broken` is set, and never answers while
/// `hanging` is set (fault injection).
struct FlakyRunnerStorage {
    inner: MemoryRunnerStorage,
    broken: AtomicBool,
    hanging: AtomicBool,
    acquire_broken: AtomicBool,
}

impl FlakyRunnerStorage {
    fn new() -> Self {
        FlakyRunnerStorage {
            inner: MemoryRunnerStorage::new(),
            broken: AtomicBool::new(false),
            hanging: AtomicBool::new(false),
            acquire_broken: AtomicBool::new(false),
        }
    }

    async fn check(&self) -> Result<(), ClusterError> {
        if self.hanging.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
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
        self.check().await?;
        self.inner.register(address, weight, ttl).await
    }
    async fn keep_alive(
        &self,
        address: &RunnerAddress,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        self.check().await?;
        self.inner.keep_alive(address, ttl).await
    }
    async fn unregister(&self, address: &RunnerAddress) -> Result<(), ClusterError> {
        self.check().await?;
        self.inner.unregister(address).await
    }
    async fn runners(&self) -> Result<Vec<Runner>, ClusterError> {
        self.check().await?;
        self.inner.runners().await
    }
    async fn watch_runners(
        &self,
    ) -> Result<BoxStream<'static, Result<Vec<Runner>, ClusterError>>, ClusterError> {
        self.check().await?;
        self.inner.watch_runners().await
    }
    async fn acquire_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        self.check().await?;
        if self.acquire_broken.load(Ordering::SeqCst) {
            return Err(ClusterError::PersistenceError {
                reason: "injected acquisition failure".into(),
                source: None,
            });
        }
        self.inner.acquire_shards(owner, shards, ttl).await
    }
    async fn refresh_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        self.check().await?;
        self.inner.refresh_shards(owner, shards, ttl).await
    }
    async fn release_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), ClusterError> {
        self.check().await?;
        self.inner.release_shards(owner, shards).await
    }
    async fn shard_owner(&self, shard: &ShardId) -> Result<Option<RunnerAddress>, ClusterError> {
        self.check().await?;
        self.inner.shard_owner(shard).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_cannot_confirm_its_locks_stops_serving_them() {
    let storage = Arc::new(FlakyRunnerStorage::new());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_storage_hangs_stops_serving_before_its_locks_expire() {
    let storage = Arc::new(FlakyRunnerStorage::new());
    let ttl = Duration::from_millis(600);
    let sharding = ShardingImpl::builder()
        .config(ShardingConfig {
            runner_lock_ttl: ttl,
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

    // Every call from now on hangs (a stuck connection, not an error).
    storage.hanging.store(true, Ordering::SeqCst);
    let hung_at = std::time::Instant::now();
    let me = sharding.runner_address().clone();
    let shards: Vec<ShardId> = (0..300).map(|i| ShardId::new("default", i)).collect();
    let mut served_without_lock = Vec::new();
    let mut fenced_after = None;
    while hung_at.elapsed() < ttl * 2 {
        let owned: std::collections::HashSet<ShardId> =
            sharding.owned_shards().into_iter().collect();
        if owned.is_empty() && fenced_after.is_none() {
            fenced_after = Some(hung_at.elapsed());
        }
        for shard in &shards {
            // The lock as the rest of the cluster sees it (the inner storage answers).
            let holder = storage.inner.shard_owner(shard).await.unwrap();
            if owned.contains(shard) && holder.as_ref() != Some(&me) {
                served_without_lock.push(shard.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        served_without_lock.is_empty(),
        "served {} shards whose lock had already expired",
        served_without_lock.len()
    );
    let fenced_after = fenced_after.expect("the runner fenced itself while storage hung");
    assert!(
        fenced_after < ttl,
        "fenced {fenced_after:?} after the hang began, not before the TTL ({ttl:?})"
    );

    storage.hanging.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || sharding.owned_shards().len()
            == 300)
        .await,
        "took back {} shards once storage answered",
        sharding.owned_shards().len()
    );
    sharding.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_acquisitions_never_stop_the_renewal_of_held_locks() {
    let storage = Arc::new(FlakyRunnerStorage::new());
    let sharding = ShardingImpl::builder()
        .config(ShardingConfig {
            runner_lock_ttl: Duration::from_millis(400),
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
    // A new shard group appears, and every acquisition of its shards fails from now on.
    storage.acquire_broken.store(true, Ordering::SeqCst);
    let mut entity = support::TestEntity::new("Other", support::Journal::default());
    entity.options.shard_group = Some("other".into());
    sharding.register_entity(Arc::new(entity)).await.unwrap();
    // Many TTLs pass with the rebalance loop failing on every round.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let default_held = sharding
        .owned_shards()
        .into_iter()
        .filter(|s| &*s.group == "default")
        .count();
    assert_eq!(
        default_held, 300,
        "renewals kept every lock of the default group"
    );
    storage.acquire_broken.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || sharding.owned_shards().len()
            == 600)
        .await
    );
    sharding.shutdown().await.unwrap();
}
