//! Shard locks on etcd: acquiring 300 locks, refreshing them, and a whole cluster's
//! rebalance when a runner joins and leaves, each beside an etcd put round trip measured
//! in the same run on the same etcd.
//!
//! `cargo run --release -p cruster-benches --bin etcd_locks`
//!
//! Reads `ETCD_ENDPOINTS` (comma separated; `source .ci/services.sh` starts etcd and sets
//! it), else uses `http://127.0.0.1:2379`. Everything lives under a fresh key prefix,
//! deleted at the end.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::etcd_client::{self, DeleteOptions};
use cruster::ports::runner_storage::RunnerStorage;
use cruster::prelude::*;
use cruster::storage::etcd_runner::EtcdRunnerStorage;
use cruster::storage::memory::{InProcessNetwork, MemoryMessageStorage};
use cruster::types::{RunnerAddress, ShardId};

const SHARDS: u32 = 300;
const ROUNDS: usize = 30;
const PUTS: usize = 500;

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    (at(0.50), at(0.99))
}

fn report(label: &str, samples: Vec<Duration>) {
    let n = samples.len();
    let (p50, p99) = stats(samples);
    println!("  {label:<44} p50={p50:>9.2?} p99={p99:>9.2?}  ({n} runs)");
}

fn shards() -> Vec<ShardId> {
    (0..SHARDS).map(|n| ShardId::new("default", n)).collect()
}

/// The reference: one put, one lease grant, one keep-alive, as etcd answers them here.
async fn etcd_round_trips(client: &etcd_client::Client, prefix: &str) -> anyhow::Result<()> {
    let mut client = client.clone();
    let mut puts = Vec::with_capacity(PUTS);
    for i in 0..PUTS {
        let started = Instant::now();
        client
            .put(format!("{prefix}bench-put/{}", i % 16), "x", None)
            .await?;
        puts.push(started.elapsed());
    }
    report("etcd put round trip (reference)", puts);
    let mut grants = Vec::new();
    let mut keep_alives = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        let lease = client.lease_grant(30, None).await?.id();
        grants.push(started.elapsed());
        let started = Instant::now();
        client.lease_keep_alive(lease).await?;
        keep_alives.push(started.elapsed());
        client.lease_revoke(lease).await?;
    }
    report("etcd lease grant (reference)", grants);
    report("etcd keep-alive, new stream (reference)", keep_alives);
    Ok(())
}

/// 300 locks taken in one `acquire_shards`, refreshed, released, by a registered runner.
async fn lock_rounds(storage: &EtcdRunnerStorage) -> anyhow::Result<()> {
    let me = RunnerAddress::new("bench-runner", 9000);
    let ttl = Duration::from_secs(30);
    storage.register(&me, 1, ttl).await?;
    let all = shards();
    let (mut acquire, mut refresh, mut release) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let held = storage.acquire_shards(&me, &all, ttl).await?;
        acquire.push(started.elapsed());
        anyhow::ensure!(held.len() == all.len(), "acquired {} of 300", held.len());
        let started = Instant::now();
        let kept = storage.refresh_shards(&me, &all, ttl).await?;
        refresh.push(started.elapsed());
        anyhow::ensure!(kept.len() == all.len(), "refreshed {} of 300", kept.len());
        let started = Instant::now();
        storage.release_shards(&me, &all).await?;
        release.push(started.elapsed());
    }
    report("acquire 300 shard locks (one call)", acquire);
    report("refresh 300 shard locks (keep-alive + CAS)", refresh);
    report("release 300 shard locks", release);
    storage.unregister(&me).await?;
    Ok(())
}

/// In-process runners on etcd runner storage; times whole-cluster rebalances.
struct Cluster {
    client: etcd_client::Client,
    prefix: String,
    network: InProcessNetwork,
    messages: Arc<MemoryMessageStorage>,
    runners: Vec<Arc<ShardingImpl>>,
}

impl Cluster {
    async fn start_runner(&mut self, i: usize) -> anyhow::Result<()> {
        let address = RunnerAddress::new(format!("bench-runner-{i}"), 9000);
        let storage = Arc::new(EtcdRunnerStorage::new(
            self.client.clone(),
            self.prefix.clone(),
            5,
        ));
        let sharding = ShardingImpl::builder()
            .config(ShardingConfig {
                runner_address: address.clone(),
                runner_lock_ttl: Duration::from_secs(6),
                shards_per_group: SHARDS,
                shutdown_timeout: Duration::from_secs(2),
                ..Default::default()
            })
            .runners(Arc::new(self.network.runners()))
            .runner_storage(storage.clone())
            .runner_health(storage)
            .message_storage(self.messages.clone())
            .memory()
            .build()?;
        self.network.register(address, sharding.clone());
        sharding.start().await?;
        self.runners.push(sharding);
        Ok(())
    }

    /// Waits until every shard is served by exactly one runner and every runner serves
    /// some; returns how long that took.
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

async fn rebalances(client: &etcd_client::Client, prefix: &str) -> anyhow::Result<()> {
    let mut cluster = Cluster {
        client: client.clone(),
        prefix: format!("{prefix}cluster/"),
        network: InProcessNetwork::new(),
        messages: Arc::new(MemoryMessageStorage::new()),
        runners: Vec::new(),
    };
    let started = Instant::now();
    cluster.start_runner(0).await?;
    let alone = cluster.balanced(started).await?;
    println!("  {:<44} {alone:>9.2?}", "one runner takes all 300 shards");
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoints: Vec<String> = std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    let storage_prefix = format!("/cruster-bench/{}/", std::process::id());
    let storage = EtcdRunnerStorage::connect(&endpoints, storage_prefix.clone(), 30).await?;
    let client = storage.client();
    println!("etcd at {}:", endpoints.join(", "));
    let result = async {
        etcd_round_trips(&client, &storage_prefix).await?;
        lock_rounds(&storage).await?;
        rebalances(&client, &storage_prefix).await
    }
    .await;
    let mut cleanup = client.clone();
    cleanup
        .delete(storage_prefix, Some(DeleteOptions::new().with_prefix()))
        .await?;
    result
}
