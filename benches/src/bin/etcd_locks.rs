//! Shard locks on etcd: acquiring 300 locks, refreshing them, and a whole cluster's
//! rebalance when a runner joins and leaves, each beside an etcd put round trip measured
//! in the same run on the same etcd.
//!
//! `cargo run --release -p cruster-benches --bin etcd_locks`
//!
//! Reads `ETCD_ENDPOINTS` (comma separated; `source .ci/services.sh` starts etcd and sets
//! it), else uses `http://127.0.0.1:2379`. Everything lives under a fresh key prefix,
//! deleted at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::etcd_client::{self, DeleteOptions};
use cruster::ports::runner_storage::{RunnerHealth, RunnerStorage};
use cruster::storage::etcd_runner::EtcdRunnerStorage;
use cruster::types::RunnerAddress;
use cruster_benches::lock_bench::{rebalances, report, shards, StorageFactory};

const ROUNDS: usize = 30;
const PUTS: usize = 500;

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
        let cluster_prefix = format!("{storage_prefix}cluster/");
        let factory: StorageFactory<'_> = Box::new(|| {
            let storage = Arc::new(EtcdRunnerStorage::new(
                client.clone(),
                cluster_prefix.clone(),
                5,
            ));
            Box::pin(async move {
                let health: Arc<dyn RunnerHealth> = storage.clone();
                let storage: Arc<dyn RunnerStorage> = storage;
                Ok((storage, health))
            })
        });
        rebalances(factory, Duration::from_secs(6)).await
    }
    .await;
    let mut cleanup = client.clone();
    cleanup
        .delete(storage_prefix, Some(DeleteOptions::new().with_prefix()))
        .await?;
    result
}
