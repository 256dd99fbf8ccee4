//! Two runners polling one PostgreSQL database (separate pools, as two processes have),
//! with shards moving between them while persisted messages are pending: no message is
//! ever handled by two runners at once, and every message is handled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cruster::prelude::*;
use cruster::storage::memory::MemoryRunnerStorage;
use cruster::storage::sql_message::SqlMessageStorage;
use cruster::transport::in_process::InProcessNetwork;
use cruster::types::{EntityType, RunnerAddress};
use parking_lot::Mutex;
use sql_support::{eventually, PgTestDb};

/// What every handler of both runners saw.
#[derive(Default)]
struct Tracker {
    in_flight: Mutex<HashMap<String, RunnerAddress>>,
    handled: Mutex<HashMap<String, usize>>,
    overlaps: Mutex<Vec<String>>,
    total: AtomicUsize,
}

#[entity(concurrency = 8)]
#[derive(Clone)]
struct Job {
    runner: RunnerAddress,
    tracker: Arc<Tracker>,
}

#[entity_impl]
impl Job {
    #[rpc(persisted)]
    pub async fn run(&self, item: String) -> Result<(), ClusterError> {
        if let Some(other) = self
            .tracker
            .in_flight
            .lock()
            .insert(item.clone(), self.runner.clone())
        {
            self.tracker
                .overlaps
                .lock()
                .push(format!("{item}: {} while {other}", self.runner));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        self.tracker.in_flight.lock().remove(&item);
        *self.tracker.handled.lock().entry(item).or_default() += 1;
        self.tracker.total.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn start_runner(
    i: u16,
    db: &PgTestDb,
    network: &InProcessNetwork,
    runner_storage: &Arc<MemoryRunnerStorage>,
    tracker: &Arc<Tracker>,
) -> Arc<ShardingImpl> {
    let address = RunnerAddress::new("127.0.0.1", 9100 + i);
    let storage = SqlMessageStorage::new(db.pool().await);
    storage.migrate().await.unwrap();
    let sharding = ShardingImpl::builder()
        .config(ShardingConfig {
            runner_address: address.clone(),
            shards_per_group: 32,
            storage_poll_interval: Duration::from_millis(20),
            ..Default::default()
        })
        .runners(Arc::new(network.runners()))
        .runner_storage(runner_storage.clone())
        .runner_health(runner_storage.clone())
        .message_storage(Arc::new(storage))
        .build()
        .unwrap();
    Job {
        runner: address.clone(),
        tracker: tracker.clone(),
    }
    .register(sharding.clone())
    .await
    .unwrap();
    network.register(address, sharding.clone());
    sharding.start().await.unwrap();
    sharding
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_one_postgres_never_handle_a_message_twice_at_once() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    const MESSAGES: usize = 400;
    let network = InProcessNetwork::new();
    let runner_storage = Arc::new(MemoryRunnerStorage::new());
    let tracker = Arc::new(Tracker::default());

    let first = start_runner(1, &db, &network, &runner_storage, &tracker).await;
    let client_a = EntityClient::new(first.clone(), EntityType::new("Job"));
    // Half the messages while the first runner is alone...
    for n in 0..MESSAGES / 2 {
        client_a
            .notify_persisted(
                &EntityId::new(format!("job-{}", n % 64)),
                "run",
                &format!("m{n}"),
            )
            .await
            .unwrap();
    }
    // ...then a second runner joins and takes half the shards while they are pending.
    let second = start_runner(2, &db, &network, &runner_storage, &tracker).await;
    let client_b = EntityClient::new(second.clone(), EntityType::new("Job"));
    let mut sends = Vec::new();
    for n in MESSAGES / 2..MESSAGES {
        let client = if n % 2 == 0 {
            client_a.clone()
        } else {
            client_b.clone()
        };
        sends.push(tokio::spawn(async move {
            // Routing may briefly fail while shards move; the persisted row is what counts.
            for _ in 0..50 {
                match client
                    .notify_persisted(
                        &EntityId::new(format!("job-{}", n % 64)),
                        "run",
                        &format!("m{n}"),
                    )
                    .await
                {
                    Ok(_) => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            panic!("m{n} could not be sent");
        }));
    }
    for send in sends {
        send.await.unwrap();
    }

    let all_handled = eventually(Duration::from_secs(60), || {
        let handled = tracker.handled.lock().len();
        async move { handled == MESSAGES }
    })
    .await;
    let handled = tracker.handled.lock().len();
    assert!(all_handled, "{handled} of {MESSAGES} messages handled");
    let overlaps = tracker.overlaps.lock().clone();
    assert!(
        overlaps.is_empty(),
        "messages handled by two runners at once: {overlaps:?}"
    );
    assert!(
        !first.owned_shards().is_empty() && !second.owned_shards().is_empty(),
        "both runners held shards"
    );
    let redelivered = tracker.total.load(Ordering::SeqCst) - MESSAGES;
    eprintln!("{MESSAGES} messages, {redelivered} redelivered after a shard move");
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    db.drop_schema().await;
}
