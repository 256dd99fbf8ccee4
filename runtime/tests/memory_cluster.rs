//! Multi-runner behaviour on an in-process cluster: distribution, failover, redelivery,
//! singletons moving, scheduled messages surviving a stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cruster::prelude::*;
use cruster::testing::MemoryCluster;
use cruster::types::EntityType;
use parking_lot::Mutex;
use support::{eventually, Journal, TestEntity};

fn cluster_config() -> ShardingConfig {
    ShardingConfig {
        runner_lock_ttl: Duration::from_millis(600),
        storage_poll_interval: Duration::from_millis(50),
        shutdown_timeout: Duration::from_secs(2),
        send_retry_count: 6,
        send_retry_backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn cluster(journal: Journal, singleton_runs: Arc<Mutex<Vec<String>>>) -> MemoryCluster {
    MemoryCluster::builder()
        .runners(3)
        .config(cluster_config())
        .setup(move |sharding: Arc<ShardingImpl>| {
            let journal = journal.clone();
            let runs = singleton_runs.clone();
            async move {
                sharding
                    .register_entity(Arc::new(TestEntity::new("T", journal)))
                    .await?;
                let me = sharding.runner_address().to_string();
                register_singleton(
                    sharding.as_ref(),
                    "the-one",
                    move |ctx: SingletonContext| {
                        let runs = runs.clone();
                        let me = me.clone();
                        async move {
                            runs.lock().push(me);
                            ctx.cancellation().cancelled().await;
                            Ok(())
                        }
                    },
                )
                .await
            }
        })
        .build()
        .await
        .unwrap()
}

fn client(cluster: &MemoryCluster, i: usize) -> EntityClient {
    EntityClient::new(cluster.runner(i), EntityType::new("T"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_entities_spread_evenly_over_three_runners() {
    let cluster = cluster(Journal::default(), Arc::default()).await;
    cluster
        .wait_until_balanced(Duration::from_secs(10))
        .await
        .unwrap();
    let client = client(&cluster, 0);
    let mut per_runner: HashMap<String, usize> = HashMap::new();
    let ids: Vec<EntityId> = (0..10_000)
        .map(|i| EntityId::new(format!("e-{i}")))
        .collect();
    for chunk in ids.chunks(500) {
        let calls = chunk
            .iter()
            .map(|id| client.send::<_, String>(id, "whoami", &()));
        for runner in futures::future::join_all(calls).await {
            *per_runner.entry(runner.unwrap()).or_default() += 1;
        }
    }
    assert_eq!(per_runner.len(), 3, "{per_runner:?}");
    for (runner, count) in &per_runner {
        let share = *count as f64 / 10_000.0;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.25 / 3.0,
            "runner {runner} serves {count} of 10000 entities: {per_runner:?}"
        );
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_runner_loses_nothing_and_its_shards_and_singleton_move() {
    let journal = Journal::default();
    let singleton_runs: Arc<Mutex<Vec<String>>> = Arc::default();
    let cluster = cluster(journal.clone(), singleton_runs.clone()).await;
    cluster
        .wait_until_balanced(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(3), || singleton_runs.lock().len() == 1).await);
    let first_singleton_host = singleton_runs.lock()[0].clone();
    let victim = (0..3)
        .find(|i| MemoryCluster::address(*i).to_string() == first_singleton_host)
        .unwrap();
    let sender = (victim + 1) % 3;

    // Persisted traffic from a surviving runner, before and during the stop.
    let client = client(&cluster, sender);
    let sent = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let client = client.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut handles = Vec::new();
            for i in 0..600 {
                let client = client.clone();
                sent.fetch_add(1, Ordering::SeqCst);
                handles.push(tokio::spawn(async move {
                    let id = EntityId::new(format!("entity-{}", i % 150));
                    client
                        .send_persisted::<_, u64>(&id, "record", &format!("msg-{i}"), false)
                        .await
                }));
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let mut replies = 0;
            for h in handles {
                h.await.unwrap().unwrap();
                replies += 1;
            }
            replies
        })
    };
    tokio::time::sleep(Duration::from_millis(40)).await;
    cluster.stop_runner(victim).await.unwrap();
    let replies = tokio::time::timeout(Duration::from_secs(30), traffic)
        .await
        .expect("every persisted send gets its reply")
        .unwrap();
    assert_eq!(replies, 600);

    let keys = journal.all_keys();
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        600,
        "every message processed (missing some)"
    );
    let duplicates = keys.len() - distinct.len();
    assert_eq!(
        duplicates, 0,
        "a graceful stop must not redeliver handled messages"
    );

    // The singleton moved to a survivor.
    assert!(
        eventually(Duration::from_secs(5), || {
            let runs = singleton_runs.lock();
            runs.len() == 2 && runs[1] != first_singleton_host
        })
        .await,
        "singleton runs: {:?}",
        singleton_runs.lock()
    );

    // A restarted runner gets shards back.
    cluster.start_runner(victim).await.unwrap();
    cluster
        .wait_until_balanced(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(!cluster.runner(victim).owned_shards().is_empty());
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runner_persisted_messages_are_redelivered_by_survivors() {
    let journal = Journal::default();
    let cluster = cluster(journal.clone(), Arc::default()).await;
    cluster
        .wait_until_balanced(Duration::from_secs(10))
        .await
        .unwrap();
    let victim = 2;
    let client = client(&cluster, 0);
    // Find entities whose shard the victim owns.
    let victim_shards: HashSet<_> = cluster.runner(victim).owned_shards().into_iter().collect();
    let sharding = cluster.runner(0);
    let ids: Vec<EntityId> = (0..2000)
        .map(|i| EntityId::new(format!("k-{i}")))
        .filter(|id| victim_shards.contains(&sharding.shard_id(&EntityType::new("T"), id)))
        .take(50)
        .collect();
    assert_eq!(ids.len(), 50);
    cluster.kill_runner(victim);
    let calls = ids.iter().enumerate().map(|(i, id)| {
        let client = client.clone();
        let id = id.clone();
        async move {
            client
                .send_persisted::<_, u64>(&id, "record", &format!("m-{i}"), false)
                .await
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
        .await
        .expect("survivors take over the victim's shards");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let keys = journal.all_keys();
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), 50);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_survive_a_runner_stop_before_they_are_due() {
    let journal = Journal::default();
    let cluster = cluster(journal.clone(), Arc::default()).await;
    cluster
        .wait_until_balanced(Duration::from_secs(10))
        .await
        .unwrap();
    let client = client(&cluster, 0);
    let due = Utc::now() + chrono::Duration::milliseconds(1500);
    let mut ids = Vec::new();
    for i in 0..30 {
        let id = EntityId::new(format!("later-{i}"));
        client
            .notify_at(&id, "record", &format!("at-{i}"), due)
            .await
            .unwrap();
        ids.push(id);
    }
    cluster.stop_runner(1).await.unwrap();
    cluster.stop_runner(2).await.unwrap();
    assert!(journal.all_keys().is_empty(), "nothing ran early");
    assert!(
        eventually(Duration::from_secs(10), || journal.all_keys().len() == 30).await,
        "delivered after the stop: {}",
        journal.all_keys().len()
    );
    assert!(Utc::now() >= due);
    cluster.shutdown().await.unwrap();
}
