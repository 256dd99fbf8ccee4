//! What the shard-lock benches of every runner storage share: latency statistics and a
//! small in-process cluster whose joins and leaves are timed until it is balanced again.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::ports::runner_storage::{RunnerHealth, RunnerStorage};
use cruster::prelude::*;
use cruster::storage::memory::{InProcessNetwork, MemoryMessageStorage};
use cruster::types::{RunnerAddress, ShardId};

/// Shards per group in every lock bench.
pub const SHARDS: u32 = 300;

/// The p50 and p99 of some samples.
pub fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// Prints one line: label, p50, p99 and how many runs.
pub fn report(label: &str, samples: Vec<Duration>) {
    let n = samples.len();
    let (p50, p99) = stats(samples);
    println!("  {label:<46} p50={p50:>9.2?} p99={p99:>9.2?}  ({n} runs)");
}

/// The shards of the default group.
pub fn shards() -> Vec<ShardId> {
    (0..SHARDS).map(|n| ShardId::new("default", n)).collect()
}

/// A runner storage (and the health check on it) for one more runner of the cluster.
pub type StorageFactory<'a> = Box<
    dyn Fn() -> Pin<
            Box<
                dyn Future<Output = anyhow::Result<(Arc<dyn RunnerStorage>, Arc<dyn RunnerHealth>)>>
                    + 'a,
            >,
        > + 'a,
>;

struct Cluster<'a> {
    storage: StorageFactory<'a>,
    lock_ttl: Duration,
    network: InProcessNetwork,
    messages: Arc<MemoryMessageStorage>,
    runners: Vec<Arc<ShardingImpl>>,
}

impl Cluster<'_> {
    async fn start_runner(&mut self, i: usize) -> anyhow::Result<()> {
        let address = RunnerAddress::new(format!("bench-runner-{i}"), 9000);
        let (storage, health) = (self.storage)().await?;
        let sharding = ShardingImpl::builder()
            .config(ShardingConfig {
                runner_address: address.clone(),
                runner_lock_ttl: self.lock_ttl,
                shards_per_group: SHARDS,
                shutdown_timeout: Duration::from_secs(2),
                ..Default::default()
            })
            .runners(Arc::new(self.network.runners()))
            .runner_storage(storage)
            .runner_health(health)
            .message_storage(self.messages.clone())
            .memory()
            .build()?;
        self.network.register(address, sharding.clone());
        sharding.start().await?;
        self.runners.push(sharding);
        Ok(())
    }

    /// Waits until every shard is served by exactly one runner and every runner knows all
    /// the others and serves some; returns how long that took.
    async fn balanced(&self, started: Instant) -> anyhow::Result<Duration> {
        loop {
            let mut seen = BTreeSet::new();
            let mut total = 0;
            let mut each = true;
            for runner in &self.runners {
                let owned = runner.owned_shards();
                each &= !owned.is_empty() && runner.known_runners().len() == self.runners.len();
                total += owned.len();
                seen.extend(owned);
            }
            if each && total == SHARDS as usize && seen.len() == total {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "no balance within 60 s ({total} shards held)"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Times one runner taking every shard, then five joins (3 → 4 runners) and five graceful
/// leaves (4 → 3), each until the cluster is balanced again, and prints them.
pub async fn rebalances(storage: StorageFactory<'_>, lock_ttl: Duration) -> anyhow::Result<()> {
    let mut cluster = Cluster {
        storage,
        lock_ttl,
        network: InProcessNetwork::new(),
        messages: Arc::new(MemoryMessageStorage::new()),
        runners: Vec::new(),
    };
    let started = Instant::now();
    cluster.start_runner(0).await?;
    let alone = cluster.balanced(started).await?;
    println!("  {:<46} {alone:>9.2?}", "one runner takes all 300 shards");
    for i in 1..3 {
        cluster.start_runner(i).await?;
    }
    cluster.balanced(Instant::now()).await?;

    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        cluster.start_runner(3).await?;
        joins.push(cluster.balanced(started).await?);
        let leaving = cluster
            .runners
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no runner"))?;
        let started = Instant::now();
        leaving.shutdown().await?;
        cluster
            .network
            .unregister(&RunnerAddress::new("bench-runner-3", 9000));
        leaves.push(cluster.balanced(started).await?);
    }
    report("rebalance on join (3 -> 4 runners)", joins);
    report("rebalance on graceful leave (4 -> 3 runners)", leaves);
    for runner in &cluster.runners {
        runner.shutdown().await?;
    }
    Ok(())
}
