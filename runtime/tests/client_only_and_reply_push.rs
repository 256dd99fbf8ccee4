//! Client-only runners (`runner_weight: 0`) and stored replies pushed to the caller's
//! runner: a client-only runner owns nothing, and a caller waiting on a persisted reply that
//! another runner stores is answered by a push from that runner, not by polling storage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use cruster::prelude::*;
use cruster::storage::memory::{InProcessNetwork, MemoryMessageStorage, MemoryRunnerStorage};
use cruster::types::{EntityType, RunnerAddress};
use support::{Journal, TestEntity};

/// Shared backends of one in-process cluster.
struct Backends {
    network: InProcessNetwork,
    runner_storage: Arc<MemoryRunnerStorage>,
    message_storage: Arc<MemoryMessageStorage>,
}

impl Backends {
    fn new() -> Self {
        Backends {
            network: InProcessNetwork::new(),
            runner_storage: Arc::new(MemoryRunnerStorage::new()),
            message_storage: Arc::new(MemoryMessageStorage::new()),
        }
    }

    /// A started runner at `port` with `weight`, polling storage every `poll`.
    async fn runner(
        &self,
        port: u16,
        weight: u32,
        poll: Duration,
        journal: &Journal,
    ) -> Arc<ShardingImpl> {
        let address = RunnerAddress::new("127.0.0.1", port);
        let sharding = ShardingImpl::builder()
            .config(ShardingConfig {
                runner_address: address.clone(),
                runner_weight: weight,
                shards_per_group: 16,
                runner_lock_ttl: Duration::from_millis(600),
                storage_poll_interval: poll,
                ..Default::default()
            })
            .runners(Arc::new(self.network.runners()))
            .runner_storage(self.runner_storage.clone())
            .runner_health(self.runner_storage.clone())
            .message_storage(self.message_storage.clone())
            .build()
            .unwrap();
        sharding
            .register_entity(Arc::new(TestEntity::new("Counter", journal.clone())))
            .await
            .unwrap();
        self.network.register(address, sharding.clone());
        sharding.start().await.unwrap();
        sharding
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_only_runner_owns_no_shards_and_its_calls_run_on_the_owners() {
    let backends = Backends::new();
    let journal = Journal::default();
    let owner = backends
        .runner(1, 1, Duration::from_millis(50), &journal)
        .await;
    let client = backends
        .runner(2, 0, Duration::from_millis(50), &journal)
        .await;
    assert!(
        support::eventually(Duration::from_secs(10), || owner.owned_shards().len() == 16).await,
        "the runner of weight 1 takes every shard, the client-only one none: {} vs {}",
        owner.owned_shards().len(),
        client.owned_shards().len()
    );
    assert!(client.owned_shards().is_empty());
    let counters = EntityClient::new(client.clone(), EntityType::new("Counter"));
    for i in 0..20 {
        let id = EntityId::new(format!("c-{i}"));
        let _: u64 = counters
            .send(&id, "record", &format!("plain-{i}"))
            .await
            .unwrap();
        let _: u64 = counters
            .send_persisted(&id, "record", &format!("persisted-{i}"), false)
            .await
            .unwrap();
    }
    assert_eq!(journal.all_keys().len(), 40, "each call ran exactly once");
    assert!(
        client.owned_shards().is_empty(),
        "the client-only runner never took a shard"
    );
    client.shutdown().await.unwrap();
    owner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_stored_by_another_runner_is_pushed_to_the_waiting_caller() {
    let backends = Backends::new();
    let journal = Journal::default();
    // The caller polls storage only every minute: within the test's bound, only a push
    // can answer it.
    let client = backends
        .runner(2, 0, Duration::from_secs(60), &journal)
        .await;
    let counters = EntityClient::new(client.clone(), EntityType::new("Counter"));
    // Nobody owns a shard yet: the request is stored and waits for an owner's poll.
    let call = tokio::spawn(async move {
        counters
            .send_persisted::<_, u64>(&EntityId::new("late"), "record", &"k".to_string(), false)
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !call.is_finished(),
        "answered before any runner owned the shard"
    );
    let owner = backends
        .runner(1, 1, Duration::from_millis(50), &journal)
        .await;
    let answered = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the caller was answered by a push, long before its fallback poll")
        .unwrap()
        .unwrap();
    assert_eq!(answered, 1);
    let received = client
        .metrics()
        .replies_pushed
        .with_label_values(&["received"])
        .get();
    assert_eq!(
        received, 1,
        "exactly one reply was pushed to the caller's runner"
    );
    let pushed = owner
        .metrics()
        .replies_pushed
        .with_label_values(&["pushed"])
        .get();
    assert_eq!(pushed, 1, "the owner pushed the reply it stored");
    client.shutdown().await.unwrap();
    owner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_only_runner_without_runner_storage_is_refused() {
    let refused = ShardingImpl::builder()
        .config(ShardingConfig {
            runner_weight: 0,
            ..Default::default()
        })
        .memory()
        .build();
    match refused {
        Err(ClusterError::InvalidConfig { field, reason }) => {
            assert_eq!(field, "runner_weight");
            assert!(reason.contains("runner storage"), "{reason}");
        }
        Err(other) => panic!("expected InvalidConfig, got {other}"),
        Ok(_) => panic!("a client-only runner without runner storage was accepted"),
    }
}
