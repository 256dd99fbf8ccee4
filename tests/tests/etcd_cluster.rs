//! Three in-process runners on etcd runner storage (shared memory message storage, the
//! in-process transport): shards spread, a killed runner's shards move to the survivors
//! within about the lock TTL, an etcd outage longer than the TTL is survived, and at no
//! sample (every 50 ms) do two runners serve one shard, or a runner serve a shard whose
//! etcd lock names another runner.
//!
//! Needs etcd: `source .ci/services.sh` starts it and sets `ETCD_ENDPOINTS`; the outage test
//! stops and restarts it with `.ci/etcd-ctl.sh`. The two tests never run at once (a lock
//! here for `cargo test`; `.config/nextest.toml` runs the outage test alone).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::etcd_client::{self, GetOptions};
use cruster::prelude::*;
use cruster::storage::etcd_runner::EtcdRunnerStorage;
use cruster::storage::memory::{
    InProcessNetwork, MemoryMessageStorage, MemoryWorkflowEngine, MemoryWorkflowStorage,
};
use cruster::types::{EntityId, RunnerAddress, ShardId};
use parking_lot::Mutex;

/// The runners' `runner_lock_ttl` (etcd's minimum lease is two seconds by default).
const LOCK_TTL: Duration = Duration::from_secs(2);
const SHARDS: u32 = 300;
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const ETCD_CTL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/etcd-ctl.sh");

/// The two scenarios share one etcd; the outage would break the other one.
static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Answers with the runner that hosts it.
#[entity]
#[derive(Clone)]
struct Locator {
    runner: String,
}

#[entity_impl]
impl Locator {
    #[rpc]
    pub async fn runner(&self) -> Result<String, ClusterError> {
        Ok(self.runner.clone())
    }
}

fn endpoints() -> Vec<String> {
    let Ok(value) = std::env::var("ETCD_ENDPOINTS") else {
        panic!(
            "ETCD_ENDPOINTS is not set: this test needs a running etcd. Run \
             `source .ci/services.sh` from the workspace root (it starts etcd on 127.0.0.1:2379 \
             and exports ETCD_ENDPOINTS), then run the test again from that shell"
        )
    };
    value
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

fn etcd_ctl(command: &str) {
    let status = Command::new("bash")
        .arg(ETCD_CTL)
        .arg(command)
        .status()
        .unwrap_or_else(|err| panic!("cannot run {ETCD_CTL} {command}: {err}"));
    assert!(status.success(), "`{ETCD_CTL} {command}` failed: {status}");
}

/// Three runners sharing memory message storage and an in-process network, each with its
/// own `EtcdRunnerStorage` under one fresh key prefix.
struct EtcdCluster {
    client: etcd_client::Client,
    prefix: String,
    network: InProcessNetwork,
    messages: Arc<MemoryMessageStorage>,
    journal: Arc<MemoryWorkflowStorage>,
    engine: Arc<MemoryWorkflowEngine>,
    runners: Mutex<BTreeMap<usize, Arc<ShardingImpl>>>,
    locators: Mutex<BTreeMap<usize, LocatorClient>>,
}

impl EtcdCluster {
    async fn start(test: &str, runners: usize) -> Arc<Self> {
        let endpoints = endpoints();
        let client = etcd_client::Client::connect(&endpoints, None)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to etcd at {endpoints:?}: {err}"));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let cluster = Arc::new(EtcdCluster {
            client,
            prefix: format!("/cruster-test/{test}-{nanos:x}/"),
            network: InProcessNetwork::new(),
            messages: Arc::new(MemoryMessageStorage::new()),
            journal: Arc::new(MemoryWorkflowStorage::new()),
            engine: Arc::new(MemoryWorkflowEngine::new()),
            runners: Mutex::new(BTreeMap::new()),
            locators: Mutex::new(BTreeMap::new()),
        });
        for i in 0..runners {
            cluster.start_runner(i).await;
        }
        cluster
    }

    fn address(i: usize) -> RunnerAddress {
        RunnerAddress::new(format!("etcd-runner-{i}"), 9000)
    }

    async fn start_runner(&self, i: usize) {
        let address = Self::address(i);
        let storage = Arc::new(
            EtcdRunnerStorage::new(self.client.clone(), self.prefix.clone(), 1)
                .with_operation_timeout(Duration::from_millis(500)),
        );
        let sharding = ShardingImpl::builder()
            .config(ShardingConfig {
                runner_address: address.clone(),
                runner_lock_ttl: LOCK_TTL,
                storage_poll_interval: Duration::from_millis(100),
                shutdown_timeout: Duration::from_secs(2),
                send_retry_count: 6,
                send_retry_backoff: Duration::from_millis(50),
                shards_per_group: SHARDS,
                ..Default::default()
            })
            .runners(Arc::new(self.network.runners()))
            .runner_storage(storage.clone())
            .runner_health(storage)
            .message_storage(self.messages.clone())
            .workflow_storage(self.journal.clone())
            .workflow_engine(self.engine.clone())
            .memory()
            .build()
            .unwrap();
        let locator = Locator {
            runner: address.to_string(),
        }
        .register(sharding.clone())
        .await
        .unwrap();
        self.network.register(address, sharding.clone());
        sharding.start().await.unwrap();
        self.runners.lock().insert(i, sharding);
        self.locators.lock().insert(i, locator);
    }

    /// A crash: nothing released, the lease left to expire.
    fn kill_runner(&self, i: usize) {
        let sharding = self.runners.lock().remove(&i).expect("runner running");
        self.locators.lock().remove(&i);
        self.network.unregister(sharding.runner_address());
        sharding.kill();
    }

    fn live(&self) -> Vec<(usize, Arc<ShardingImpl>)> {
        self.runners
            .lock()
            .iter()
            .map(|(i, s)| (*i, s.clone()))
            .collect()
    }

    /// Which live runner serves which shard, and the shards two runners serve at once.
    fn served(&self) -> (BTreeMap<ShardId, Vec<usize>>, Vec<ShardId>) {
        let mut served: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
        for (i, runner) in self.live() {
            for shard in runner.owned_shards() {
                served.entry(shard).or_default().push(i);
            }
        }
        let doubled = served
            .iter()
            .filter(|(_, by)| by.len() > 1)
            .map(|(s, _)| s.clone())
            .collect();
        (served, doubled)
    }

    /// Shard → the runner its etcd lock names.
    async fn etcd_locks(&self) -> Result<BTreeMap<String, String>, etcd_client::Error> {
        let mut client = self.client.clone();
        let prefix = format!("{}shards/", self.prefix);
        let found = client
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(found
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                (
                    key.trim_start_matches(prefix.as_str()).to_string(),
                    String::from_utf8_lossy(kv.value()).to_string(),
                )
            })
            .collect())
    }

    /// Waits until every shard is served by exactly one live runner, each serving some.
    async fn wait_until_balanced(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let (served, doubled) = self.served();
            let live = self.live();
            let each_serves = live.iter().all(|(_, r)| !r.owned_shards().is_empty());
            let all_known = live
                .iter()
                .all(|(_, r)| r.known_runners().len() == live.len());
            if served.len() == SHARDS as usize && doubled.is_empty() && each_serves && all_known {
                return started.elapsed();
            }
            if started.elapsed() > within {
                let per_runner: Vec<(usize, usize)> = live
                    .iter()
                    .map(|(i, r)| (*i, r.owned_shards().len()))
                    .collect();
                panic!(
                    "not balanced within {within:?}: {} of {SHARDS} shards served, per runner \
                     {per_runner:?}, doubled {doubled:?}",
                    served.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(&self) {
        for (_, runner) in self.live() {
            runner.shutdown().await.unwrap();
        }
    }
}

/// Samples the cluster every 50 ms until stopped, recording every instant at which a
/// shard is served twice or served by a runner that etcd does not name as its holder.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    violations: Arc<Mutex<Vec<String>>>,
    samples: Arc<AtomicUsize>,
    etcd_unreadable: Arc<AtomicUsize>,
}

impl Sampler {
    fn start(cluster: Arc<EtcdCluster>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(AtomicUsize::new(0));
        let etcd_unreadable = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (stop, violations, samples, unreadable) = (
                stop.clone(),
                violations.clone(),
                samples.clone(),
                etcd_unreadable.clone(),
            );
            let started = Instant::now();
            async move {
                while !stop.load(Ordering::Acquire) {
                    // Memory first, then etcd: a lock changes hands in etcd only after its
                    // holder stopped serving it (and the next owner needs a round trip or
                    // more to take it), so this order keeps false alarms out in practice.
                    let (served, doubled) = cluster.served();
                    let at = started.elapsed();
                    for shard in doubled {
                        violations.lock().push(format!(
                            "at {at:?}: {shard} served by runners {:?}",
                            served[&shard]
                        ));
                    }
                    match tokio::time::timeout(Duration::from_millis(300), cluster.etcd_locks())
                        .await
                    {
                        Ok(Ok(locks)) => {
                            for (shard, by) in &served {
                                let Some(holder) = locks.get(&shard.to_string()) else {
                                    continue;
                                };
                                for runner in by {
                                    let me = EtcdCluster::address(*runner).to_string();
                                    if *holder != me {
                                        violations.lock().push(format!(
                                            "at {at:?}: runner {me} serves {shard} while its \
                                             etcd lock names {holder}"
                                        ));
                                    }
                                }
                            }
                        }
                        _ => {
                            unreadable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    samples.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
            }
        });
        Sampler {
            stop,
            task,
            violations,
            samples,
            etcd_unreadable,
        }
    }

    /// Stops sampling and fails the test with every violation seen.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap();
        let violations = self.violations.lock().clone();
        let samples = self.samples.load(Ordering::Relaxed);
        assert!(
            violations.is_empty(),
            "{} violation(s) in {samples} samples; first ones:\n{}",
            violations.len(),
            violations
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        samples
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_runner_shards_move_to_survivors_and_no_shard_is_served_twice() {
    let _alone = EXCLUSIVE.lock().await;
    let cluster = EtcdCluster::start("etcd-kill", 3).await;
    let balanced = cluster.wait_until_balanced(Duration::from_secs(30)).await;
    eprintln!("3 runners balanced {SHARDS} shards in {balanced:?}");
    let sampler = Sampler::start(cluster.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let victim = 1;
    let orphaned: BTreeSet<ShardId> = cluster.runners.lock()[&victim]
        .owned_shards()
        .into_iter()
        .collect();
    assert!(!orphaned.is_empty());
    let killed_at = Instant::now();
    cluster.kill_runner(victim);

    // The survivors serve every shard again: the victim's lease lapses (TTL, checked by
    // etcd every 500 ms), the watch reports the leave, a rebalance round takes the locks.
    let moved = cluster.wait_until_balanced(Duration::from_secs(30)).await;
    let took = killed_at.elapsed();
    eprintln!(
        "the {} shards of the killed runner moved to the survivors in {took:?} \
         (lock TTL {LOCK_TTL:?})",
        orphaned.len()
    );
    let _ = moved;
    let bound = LOCK_TTL + Duration::from_millis(2500);
    assert!(
        took <= bound,
        "the survivors took {took:?} to serve the killed runner's shards (bound {bound:?})"
    );

    let locks = cluster.etcd_locks().await.unwrap();
    let dead = EtcdCluster::address(victim).to_string();
    for shard in &orphaned {
        let holder = locks.get(&shard.to_string());
        assert!(
            holder.is_some_and(|h| *h != dead),
            "{shard}: etcd lock is {holder:?} after the move"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = sampler.finish().await;
    eprintln!("no shard served twice in {samples} samples");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_outage_longer_than_the_ttl_is_survived_and_no_shard_is_served_twice() {
    let _alone = EXCLUSIVE.lock().await;
    let cluster = EtcdCluster::start("etcd-outage", 3).await;
    cluster.wait_until_balanced(Duration::from_secs(30)).await;
    let sampler = Sampler::start(cluster.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let outage = LOCK_TTL * 2 + Duration::from_secs(1);
    etcd_ctl("stop");
    let stopped_at = Instant::now();
    // Fencing: a runner that cannot renew its locks stops serving them within a lock TTL
    // (checked from a TTL and a renewal period plus a second into the outage).
    let mut served_late = 0;
    while stopped_at.elapsed() < outage {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stopped_at.elapsed() > LOCK_TTL + LOCK_TTL / 3 + Duration::from_secs(1) {
            served_late = served_late.max(cluster.served().0.len());
        }
    }
    eprintln!(
        "etcd down for {:?}; most shards served more than a TTL into the outage: {served_late}",
        stopped_at.elapsed()
    );
    assert_eq!(
        served_late, 0,
        "runners kept serving shards more than a lock TTL after they last could renew their locks"
    );
    etcd_ctl("start");
    let restarted_at = Instant::now();

    cluster.wait_until_balanced(Duration::from_secs(60)).await;
    eprintln!(
        "balanced again {:?} after `etcd-ctl.sh start` returned (it waits until etcd is healthy)",
        restarted_at.elapsed()
    );

    // The cluster serves: every runner can reach entities on every runner.
    let locators: Vec<LocatorClient> = cluster.locators.lock().values().cloned().collect();
    let mut hosts = BTreeSet::new();
    for n in 0..30 {
        let id = EntityId::new(format!("after-outage-{n}"));
        let locator = &locators[n % locators.len()];
        let deadline = Instant::now() + Duration::from_secs(20);
        let host = loop {
            match locator.runner(&id).await {
                Ok(host) => break host,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("send to {id} failed ({err}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("the cluster does not serve {id} after the outage: {err}"),
            }
        };
        hosts.insert(host);
    }
    assert_eq!(
        hosts.len(),
        3,
        "entities after the outage live on {hosts:?}"
    );

    let unreadable = sampler.etcd_unreadable.load(Ordering::Relaxed);
    let samples = sampler.finish().await;
    eprintln!("no shard served twice in {samples} samples ({unreadable} without etcd)");
    cluster.shutdown().await;
}
